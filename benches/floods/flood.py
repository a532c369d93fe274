#!/usr/bin/env python3
"""The hostile clients of the flood bench, and its prober, sampler and table (stdlib only).

Driven by run.sh, which starts a fresh sidecar per flood:

    flood.py wait  --port P                      # until /healthz answers (at most 20 s)
    flood.py run   --port P --pid PID --flood F  # one flood; prints one JSON line
    flood.py probe --port P --pid PID            # (spawned by `run`) until stdin closes
    flood.py table RESULTS.jsonl                 # the markdown table of all floods

The prober and sampler run in a process of their own so that the flood clients' work on this
client's event loop does not show up as the sidecar's latency. Every connection, wait and loop is
bounded in count and in time: a flood ends by itself even if the sidecar never answers.
"""

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
import uuid

HOST = "127.0.0.1"
KEY = "0123456789abcdef0123456789abcdef"
MIB = 1024 * 1024
BIG = 19 * MIB
CHUNK = 64 * 1024  # what one write hands the socket: the client's own memory stays small
PROBE_EVERY = 0.2
PROBE_TIMEOUT = 5.0
SLOW = 2.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- HTTP by hand: the floods need requests no client library would send -------------------------


def head(method, path, headers):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader):
    data = await reader.readuntil(b"\r\n\r\n")
    lines = data.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def request(port, raw):
    """One request on a fresh connection (a new client each time); returns the status."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        await writer.drain()
        status, headers = await read_head(reader)
        n = int(headers.get("content-length", "0"))
        if n:
            await reader.readexactly(n)
        return status
    finally:
        writer.close()


def small_envelope():
    event_id = uuid.uuid4().hex
    event = json.dumps(
        {"event_id": event_id, "level": "error", "platform": "python",
         "message": "flood bench probe", "timestamp": time.time()}
    ).encode()
    body = (json.dumps({"event_id": event_id}).encode() + b"\n"
            + json.dumps({"type": "event", "length": len(event)}).encode() + b"\n" + event + b"\n")
    return head("POST", f"/api/42/envelope/?sentry_key={KEY}",
                [("Content-Type", "application/x-sentry-envelope"),
                 ("Content-Length", len(body))]) + body


HEALTHZ = head("GET", "/healthz", [("Connection", "close")])


# --- the prober and the sampler ----------------------------------------------------------------


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        return None
    return out


async def probe_main(port, pid, max_seconds):
    lat = {"envelope": [], "healthz": []}
    fail = collections.Counter()
    slow = collections.Counter()
    peak = {"VmHWM": 0, "VmRSS": 0, "died": False}

    async def one(kind, raw):
        t0 = time.monotonic()
        try:
            status = await asyncio.wait_for(request(port, raw), PROBE_TIMEOUT)
            ok = 200 <= status < 300
        except Exception:  # whatever went wrong, the probe failed
            ok = False
        dt = time.monotonic() - t0
        if ok:
            lat[kind].append(dt)
        else:
            fail[kind] += 1
        if not ok or dt > SLOW:
            slow[kind] += 1

    async def sample(stop):
        while not stop.is_set():
            s = proc_status(pid)
            if s is None:
                peak["died"] = True
                return
            peak["VmHWM"] = max(peak["VmHWM"], s.get("VmHWM", 0))
            peak["VmRSS"] = max(peak["VmRSS"], s.get("VmRSS", 0))
            try:
                await asyncio.wait_for(stop.wait(), 0.1)
            except asyncio.TimeoutError:
                pass

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    def stdin_closed():  # `run` closes our stdin when its flood is over
        loop.remove_reader(sys.stdin.fileno())
        stop.set()

    loop.add_reader(sys.stdin.fileno(), stdin_closed)
    loop.call_later(max_seconds, stop.set)
    sampler = asyncio.create_task(sample(stop))
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.create_task(one("envelope", small_envelope())))
        tasks.append(asyncio.create_task(one("healthz", HEALTHZ)))
        try:
            await asyncio.wait_for(stop.wait(), PROBE_EVERY)
        except asyncio.TimeoutError:
            pass
    await asyncio.gather(*tasks, sampler)
    s = proc_status(pid)
    if s is not None:
        peak["VmHWM"] = max(peak["VmHWM"], s.get("VmHWM", 0))
        peak["rss_end"] = s.get("VmRSS", 0)
    out = {"peak": peak}
    for kind in lat:
        xs = lat[kind]
        out[kind] = {"sent": len(xs) + fail[kind], "failed": fail[kind], "slow": slow[kind],
                     "p50": statistics.median(xs) if xs else None, "max": max(xs) if xs else None}
    print(json.dumps(out), flush=True)


# --- one hostile connection ----------------------------------------------------------------------


class Body:
    """A request's bytes as a few shared buffers: 300 clients of 19 MiB share one payload."""

    def __init__(self, *parts):
        self.parts = [memoryview(p) for p in parts]
        self.len = sum(len(p) for p in self.parts)

    def chunks(self, start, end):
        pos = 0
        for p in self.parts:
            lo, hi = max(start - pos, 0), min(end - pos, len(p))
            for off in range(lo, hi, CHUNK):
                yield p[off:min(off + CHUNK, hi)]
            pos += len(p)


async def connection(port, body, upto, stall, rest, answer_wait):
    """Sends `body` up to byte `upto`, stalls `stall` s, sends the rest if `rest`, and waits at most
    `answer_wait` s more for an answer. Returns (outcome, seconds, headers): the status, or what
    became of the connection instead."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    except (OSError, asyncio.TimeoutError):
        return "connect failed", time.monotonic() - t0, {}

    async def send():
        for c in body.chunks(0, upto):
            writer.write(c)
            await writer.drain()
        if stall:
            await asyncio.sleep(stall)
        if rest:
            for c in body.chunks(upto, body.len):
                writer.write(c)
                await writer.drain()
        # Then as long as the answer may take.
        await asyncio.sleep(answer_wait)

    sender = asyncio.create_task(send())
    answer = asyncio.create_task(read_head(reader))
    limit = 60 + stall + answer_wait
    try:
        # A write that fails (the sidecar answered and closed) is not the end: its answer may
        # still be in our receive buffer.
        done, _ = await asyncio.wait({answer, sender}, timeout=limit,
                                     return_when=asyncio.FIRST_COMPLETED)
        if answer not in done:
            await asyncio.wait({answer}, timeout=2 if sender.done() else 0)
        if answer.done():
            try:
                status, headers = answer.result()
                outcome = str(status)
            except asyncio.IncompleteReadError as e:
                outcome, headers = ("closed" if not e.partial else "cut"), {}
            except ConnectionResetError:
                outcome, headers = "reset", {}
            except (OSError, ValueError, asyncio.LimitOverrunError):
                outcome, headers = "error", {}
        else:
            outcome, headers = "no answer", {}
    finally:
        for t in (sender, answer):
            t.cancel()
        await asyncio.gather(sender, answer, return_exceptions=True)
        writer.close()
    return outcome, time.monotonic() - t0, headers


async def keep_alive(port, idle_max):
    """A client that asks once on a keep-alive connection, then sits idle: when is it closed?"""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    except (OSError, asyncio.TimeoutError):
        return "connect failed", time.monotonic() - t0, {}
    try:
        writer.write(head("GET", "/healthz", []))
        await writer.drain()
        status, headers = await asyncio.wait_for(read_head(reader), 10)
        n = int(headers.get("content-length", "0"))
        if n:
            await asyncio.wait_for(reader.readexactly(n), 10)
        t1 = time.monotonic()
        try:
            more = await asyncio.wait_for(reader.read(1), idle_max)
            outcome = f"{status}, then closed" if not more else f"{status}, then data"
        except asyncio.TimeoutError:
            outcome = f"{status}, still open"
        except ConnectionResetError:
            outcome = f"{status}, then reset"
        return outcome, time.monotonic() - t1, {}
    except asyncio.IncompleteReadError:
        return "closed", time.monotonic() - t0, {}
    except ConnectionResetError:
        return "reset", time.monotonic() - t0, {}
    except (OSError, asyncio.TimeoutError, ValueError):
        return "no answer", time.monotonic() - t0, {}
    finally:
        writer.close()


async def with_retry(port, make, deadline, tries):
    """An upload retried on 503 after its Retry-After, as an SDK's transport would."""
    got = []
    t0 = time.monotonic()
    while len(got) < tries and time.monotonic() < deadline:
        body = make()
        outcome, _, headers = await connection(port, body, body.len, 0, False, 30)
        got.append(outcome)
        if outcome != "503":
            break
        wait = float(headers.get("retry-after", "1") or 1)
        await asyncio.sleep(min(wait, max(deadline - time.monotonic(), 0)))
    return got[-1], time.monotonic() - t0, {"tries": len(got)}


# --- the floods ---------------------------------------------------------------------------------


def envelope_head(extra=()):
    return [("Content-Type", "application/x-sentry-envelope"), *extra]


def minidump_body(payload):
    boundary = "floodbenchboundary"
    pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"upload_file_minidump\"; "
           f"filename=\"crash.dmp\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    post = f"\r\n--{boundary}--\r\n".encode()
    size = BIG - len(pre) - len(post)
    return boundary, pre, memoryview(payload)[:size], post


def big_envelope(payload):
    data = memoryview(payload)[: BIG - 256]  # the whole envelope just under 19 MiB
    event_id = uuid.uuid4().hex
    item = json.dumps({"type": "attachment", "length": len(data), "filename": "crash.dmp",
                       "content_type": "application/octet-stream"}).encode()
    top = json.dumps({"event_id": event_id}).encode() + b"\n" + item + b"\n"
    return top, data, b"\n"


async def flood(name, port, args):
    """Returns (label, {group: [(outcome, seconds, info)]})."""
    n = args.scale
    if name == "bodies":
        payload = os.urandom(BIG)
        boundary, pre, mid, post = minidump_body(payload)
        b = Body(pre, mid, post)
        req = Body(head("POST", f"/api/42/minidump/?sentry_key={KEY}",
                        [("Content-Type", f"multipart/form-data; boundary={boundary}"),
                         ("Content-Length", b.len)]), pre, mid, post)
        count = round(300 * n)
        res = await asyncio.gather(*(connection(port, req, req.len - 1, 10, True, 20)
                                     for _ in range(count)))
        return f"{count} x 19 MiB minidump, last byte held 10 s", {"": res}
    if name == "envelopes":
        payload = os.urandom(BIG)

        def make():
            top, mid, nl = big_envelope(payload)
            length = len(top) + len(mid) + len(nl)
            h = head("POST", f"/api/42/envelope/?sentry_key={KEY}",
                     envelope_head([("Content-Length", length)]))
            return Body(h, top, mid, nl)

        count = round(20 * n)
        deadline = time.monotonic() + 90
        res = await asyncio.gather(*(with_retry(port, make, deadline, 30) for _ in range(count)))
        return f"{count} x 19 MiB envelope at once, retried on 503", {"": res}
    if name == "stalled-body":
        count = round(1100 * n)
        body = b"x" * 1000
        req = Body(head("POST", f"/api/42/envelope/?sentry_key={KEY}",
                        envelope_head([("Content-Length", len(body))])), body)
        upto = req.len - len(body) + 1
        res = await asyncio.gather(*(connection(port, req, upto, 0, False, 20)
                                     for _ in range(count)))
        return f"{count} connections: headers + 1 body byte, then stall", {"": res}
    if name == "stalled-headers":
        count = round(1100 * n)
        half = Body(b"POST /api/42/envelope/?sentry_key=" + KEY.encode()
                    + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        idle = [asyncio.create_task(keep_alive(port, 20)) for _ in range(count)]
        # The idle keep-alive connections first, so that the cap is met with them in it.
        await asyncio.sleep(1)
        stalled = await asyncio.gather(*(connection(port, half, half.len, 0, False, 20)
                                         for _ in range(count)))
        return (f"{count} idle keep-alive + {count} stopping halfway through headers",
                {"idle": await asyncio.gather(*idle), "half": stalled})
    if name in ("brotli", "zstd"):
        path, enc, count = ((args.brotli, "br", round(20 * n)) if name == "brotli"
                            else (args.zstd, args.zstd_encoding, round(100 * n)))
        with open(path, "rb") as f:
            bomb = f.read()
        req = Body(head("POST", f"/api/42/envelope/?sentry_key={KEY}",
                        envelope_head([("Content-Encoding", enc),
                                       ("Content-Length", len(bomb))])), bomb)
        res = await asyncio.gather(*(connection(port, req, req.len, 0, False, 60)
                                     for _ in range(count)))
        label = (f"{count} brotli bombs at once ({len(bomb):,} B -> {args.brotli_size})"
                 if name == "brotli" else
                 f"{count} {enc} bombs at once ({len(bomb):,} B -> {args.zstd_size})")
        return label, {"": res}
    raise SystemExit(f"unknown flood {name}")


def summarise(groups):
    """Per group, each outcome's count and when it came (p50, and max if later)."""
    parts = []
    for group, res in groups.items():
        by = collections.defaultdict(list)
        for outcome, secs, _ in res:
            by[outcome].append(secs)
        items = []
        for outcome, secs in sorted(by.items(), key=lambda kv: -len(kv[1])):
            p50, top = statistics.median(secs), max(secs)
            when = f"{p50:.1f} s" + (f", max {top:.1f} s" if top - p50 >= 0.1 else "")
            items.append(f"{outcome} x{len(secs)} ({when})")
        text = ", ".join(items)
        tries = [i["tries"] for _, _, i in res if "tries" in i]
        if tries:
            text += f"; tries p50 {statistics.median(tries):g}, max {max(tries)}"
        parts.append(f"{group}: {text}" if group else text)
    return "; ".join(parts)


async def refusals(port):
    """The sidecar's own count of what it refused, by reason, from /metrics."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        writer.write(head("GET", "/metrics", [("Connection", "close")]))
        await writer.drain()
        text = (await asyncio.wait_for(reader.read(), 5)).decode("latin-1")
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return "?"
    by_reason = collections.Counter()
    for line in text.splitlines():
        if line.startswith("sidecar_rejected_total{"):
            name, _, value = line.rpartition(" ")
            reason = name.split('reason="', 1)[-1].split('"', 1)[0]
            by_reason[reason] += float(value)
    return ", ".join(f"{k} {v:g}" for k, v in by_reason.most_common() if v) or "none"


async def run_main(args):
    prober = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "probe", "--port", str(args.port),
        "--pid", str(args.pid), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    await asyncio.sleep(1)  # a second of the quiet sidecar first
    t0 = time.monotonic()
    label, groups = await asyncio.wait_for(flood(args.flood, args.port, args), 200)
    took = time.monotonic() - t0
    prober.stdin.close()
    out, _ = await asyncio.wait_for(prober.communicate(), 30)
    probe = json.loads(out)
    print(json.dumps({"flood": args.flood, "label": label, "seconds": round(took, 1),
                      "clients": summarise(groups), "refused": await refusals(args.port),
                      **probe}), flush=True)


async def wait_main(port):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if await asyncio.wait_for(request(port, HEALTHZ), 2) == 200:
                return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the sidecar did not answer /healthz within 20 s")


def table(path):
    def mib(b):
        return f"{b / MIB:.0f} MiB" if b else "?"

    def ms(x):
        return "-" if x is None else f"{x * 1000:.0f}"

    def probe(p):
        return (f"{ms(p['p50'])} / {ms(p['max'])} ms; {p['failed']} failed, "
                f"{p['slow'] - p['failed']} slow of {p['sent']}")

    print("| flood | peak RSS (VmHWM) | small envelope p50 / max; failed, > 2 s | "
          "`/healthz` p50 / max; failed, > 2 s | what the flood clients got (when) | "
          "`sidecar_rejected_total` |")
    print("|---|---|---|---|---|---|")
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            peak = r["peak"]
            rss = mib(peak["VmHWM"]) + (" (died)" if peak.get("died") else "")
            print(f"| {r['label']} ({r['seconds']} s) | {rss} | {probe(r['envelope'])} | "
                  f"{probe(r['healthz'])} | {r['clients']} | {r.get('refused', '?')} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=["wait", "run", "probe", "table"])
    ap.add_argument("results", nargs="?")
    ap.add_argument("--port", type=int)
    ap.add_argument("--pid", type=int)
    ap.add_argument("--flood")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every flood's count")
    ap.add_argument("--brotli", default=os.path.join(ROOT, "tests/data/zeros_1gib.br"))
    ap.add_argument("--brotli-size", default="1 GiB")
    ap.add_argument("--zstd")
    ap.add_argument("--zstd-encoding", default="zstd")
    ap.add_argument("--zstd-size", default="?")
    ap.add_argument("--probe-max-seconds", type=float, default=300)
    args = ap.parse_args()
    if args.cmd == "wait":
        asyncio.run(wait_main(args.port))
    elif args.cmd == "run":
        asyncio.run(run_main(args))
    elif args.cmd == "probe":
        asyncio.run(probe_main(args.port, args.pid, args.probe_max_seconds))
    else:
        table(args.results)


if __name__ == "__main__":
    main()
