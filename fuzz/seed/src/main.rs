//! Writes the seed corpora of the fuzz targets: `seed <fixtures dir> <corpus dir>`.
//!
//! Each fixture is a captured request (`<name>.body`, still content-encoded, and
//! `<name>.http.json` with its path and headers). The targets want different views of it: the
//! decoder chain the raw body with its `Content-Encoding`, the envelope and store parsers and the
//! rewriter the decoded body, the auth target the credentials and the DSN. A few hand-made inputs
//! per target cover what no capture holds (rate-limit headers, edge cases of the grammars).
//! File names are fixed, so running it again overwrites its own seeds and leaves the fuzzer's.

use std::error::Error;
use std::fs;
use std::io::Read;
use std::path::Path;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn decode(encoding: &str, body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    match encoding {
        "" => out.extend_from_slice(body),
        "br" => {
            brotli_decompressor::Decompressor::new(body, 4096).read_to_end(&mut out)?;
        }
        "gzip" => {
            flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out)?;
        }
        // The fixtures' deflate is zlib (RFC 1950).
        "deflate" => {
            flate2::read::ZlibDecoder::new(body).read_to_end(&mut out)?;
        }
        other => return Err(format!("no seed decoder for `{other}`").into()),
    }
    Ok(out)
}

fn write(corpus: &Path, target: &str, name: &str, data: &[u8]) -> Result<()> {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), data)?;
    Ok(())
}

fn fixture(corpus: &Path, dir: &Path, name: &str) -> Result<()> {
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join(format!("{name}.http.json")))?)?;
    let body = fs::read(dir.join(format!("{name}.body")))?;
    let header = |wanted: &str| {
        meta["headers"].as_array().into_iter().flatten().find_map(|h| {
            (h[0].as_str()?.eq_ignore_ascii_case(wanted)).then(|| h[1].as_str().unwrap_or_default().to_owned())
        })
    };
    let encoding = header("content-encoding").unwrap_or_default();

    let mut raw = format!("{encoding}\n").into_bytes();
    raw.extend_from_slice(&body);
    write(corpus, "decode", name, &raw)?;

    let decoded = decode(&encoding, &body)?;
    let path = meta["path"].as_str().unwrap_or_default();
    if path.contains("/store/") {
        write(corpus, "store", name, &decoded)?;
    } else {
        write(corpus, "envelope", name, &decoded)?;
        // envelope_stream: a control byte and piece sizes first (see its target): the body in one
        // piece, byte by byte, and in pieces of 1, 7 and 1024 bytes with empty feeds between.
        for (suffix, control) in [("", &[0x00][..]), (".bytes", &[0x01, 1]), (".pieces", &[0x43, 1, 7, 0xc0])] {
            write(corpus, "envelope_stream", &format!("{name}{suffix}"), &[control, &decoded].concat())?;
        }
        let mut shifted = 90u16.to_be_bytes().to_vec();
        shifted.extend_from_slice(&decoded);
        write(corpus, "rewrite", name, &shifted)?;
    }

    if let Some(auth) = header("x-sentry-auth") {
        write(corpus, "auth", &format!("{name}.header"), auth.as_bytes())?;
        write(corpus, "rewrite", &format!("{name}.auth"), &[&[0, 10][..], auth.as_bytes()].concat())?;
    }
    if let Some((_, query)) = path.split_once('?') {
        write(corpus, "auth", &format!("{name}.query"), query.as_bytes())?;
    }
    if let Some(dsn) = meta["capture"]["dsn"].as_str() {
        write(corpus, "auth", &format!("{name}.dsn"), dsn.as_bytes())?;
    }
    Ok(())
}

/// Inputs no capture holds: the upstream's headers, and the corners of each grammar.
const HANDMADE: &[(&str, &str, &[u8])] = &[
    ("rate_limits", "protocol_example", b"60:transaction:key, 2700:default;error;security:organization"),
    ("rate_limits", "reasons", b"2.5::project:quota_exceeded, 10:bogus:key, 5:bogus;error:key:reason:custom"),
    ("rate_limits", "retry_after_date", b"Wed, 21 Oct 2015 07:28:00 GMT"),
    ("rate_limits", "retry_after_huge", b"1e308"),
    ("auth", "prefixed_dsn", b"https://k:secret@o1.ingest.sentry.io:8443/sentry/x/7/?x=y#z"),
    ("auth", "authorization", b"Sentry sentry_key=k,sentry_version=7.0,sentry_client=x/1"),
    ("envelope", "length_zero", b"{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\"}\n\n"),
    ("envelope", "huge_length", b"{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n"),
    // envelope_stream: control byte, its parameters, the body (see fuzz_targets/envelope_stream.rs).
    (
        "envelope_stream",
        "length_zero",
        b"\x02\x03\x00{}\n{\"type\":\"attachment\",\"length\":0}\n\n{\"type\":\"attachment\"}\n\n",
    ),
    ("envelope_stream", "huge_length", b"\x01\x05{}\n{\"type\":\"event\",\"length\":18446744073709551615}\n"),
    (
        "envelope_stream",
        "event_and_transaction",
        b"\x01\x04{}\n{\"type\":\"event\"}\n{}\n{\"type\":\"transaction\"}\n{}",
    ),
    // 1,001 items (repeat 0x03e9 times), past the 1,000 item type names kept.
    ("envelope_stream", "many_items", b"\x21\x40\x03\xe9{}\n{\"type\":\"attachment\"}\nx\n"),
    // An item header of exactly MAX_LINE bytes (spaces at byte 4: 27 + 65,536 - 64 + 37) and one
    // byte over it, in 64 KiB and 1 KiB pieces.
    ("envelope_stream", "line_at_max", b"\x11\xff\x00\x04\x25{}\n{\"type\":\"event\",\"length\":2}\n{}\n"),
    ("envelope_stream", "line_past_max", b"\x11\xc0\x00\x04\x26{}\n{\"type\":\"event\",\"length\":2}\n{}\n"),
    ("store", "json", b"{\"event_id\":\"0123456789abcdef0123456789abcdef\",\"type\":\"transaction\"}"),
    ("decode", "two_codings", b"zstd, gzip\n"),
    ("rewrite", "offset", b"\x00\x05{\"sent_at\":\"2026-11-26T05:00:00+01:00\"}"),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, fixtures, corpus] = &args[..] else {
        return Err("usage: seed <fixtures dir> <corpus dir>".into());
    };
    let (fixtures, corpus) = (Path::new(fixtures), Path::new(corpus));
    let mut names: Vec<String> = fs::read_dir(fixtures)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".http.json").map(str::to_owned))
        .collect();
    names.sort();
    for name in &names {
        fixture(corpus, fixtures, name).map_err(|e| format!("{name}: {e}"))?;
    }
    for (target, name, data) in HANDMADE {
        write(corpus, target, &format!("handmade_{name}"), data)?;
    }
    println!("seeded {} fixtures and {} hand-made inputs into {}", names.len(), HANDMADE.len(), corpus.display());
    Ok(())
}
