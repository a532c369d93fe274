//! DSN and auth parsing: `Dsn::parse`, `Auth::from_header` and `Auth::from_query`, all three on
//! the same text (one corpus then serves each: DSNs, header values and query strings).
//!
//! Beyond "no panic": a parsed DSN prints to a DSN that parses back to the same fields, and
//! accepted credentials always carry a key and a protocol version Sentry speaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sentry_sidecar::protocol::{Auth, Dsn};

fn check(auth: &Auth) {
    assert!(!auth.public_key.is_empty());
    if let Some(v) = &auth.version {
        let major: u32 = v.split('.').next().unwrap_or_default().parse().expect("accepted version is numeric");
        assert!(major <= 7);
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(dsn) = Dsn::parse(&s) {
        assert!(!dsn.public_key.is_empty() && !dsn.authority.is_empty());
        assert!(dsn.scheme == "http" || dsn.scheme == "https");
        let printed = dsn.to_string();
        assert_eq!(Dsn::parse(&printed).as_ref(), Ok(&dsn), "{printed}");
        assert!(dsn.base_url().starts_with(&dsn.scheme));
        let _ = dsn.envelope_path_with_query_auth();
    }
    if let Ok(auth) = Auth::from_header(&s) {
        check(&auth);
    }
    if let Ok(Some(auth)) = Auth::from_query(&s) {
        check(&auth);
    }
});
