#!/usr/bin/env bash
# The flood bench: a hostile client's floods against the release binary with default flags, one
# after another, each against a fresh sidecar, while a prober sends a small envelope and GET
# /healthz every 200 ms (each on a new connection) and a sampler reads VmHWM/VmRSS from /proc.
# Prints one markdown table: per flood, the peak RSS, the probes' p50/max latency, how many failed
# or took over 2 s, and what the flood's own clients got (status counts, when they got it).
#
#   bash benches/floods/run.sh                      # all floods, about 3-4 minutes
#   FLOODS="bodies zstd" bash benches/floods/run.sh # some of them
#   SCALE=0.1 bash benches/floods/run.sh            # every flood's count x0.1 (a quick try)
#   SIDECAR_BIN=/tmp/sidecar-a bash benches/floods/run.sh   # a prebuilt binary
#   KEEP_WORK=1 bash benches/floods/run.sh          # keep the sidecars' logs and the raw results
#
# Floods (FLOODS, in this order by default):
#   bodies           300 connections each send a 19 MiB minidump and hold its last byte 10 s
#   envelopes        20 valid ~19 MiB envelopes (one attachment) at once, retried on 503 after
#                    Retry-After, at most 90 s: how many were accepted in the end
#   stalled-body     1,100 connections send headers and one body byte, then stall
#   stalled-headers  1,100 idle keep-alive connections, then 1,100 stopping halfway through headers
#   brotli           tests/data/zeros_1gib.br (Content-Encoding: br) x 20 at once
#   zstd             100 zstd bombs at once (zeros, ZSTD_BOMB_GIB GiB; a gzip bomb made by
#                    Python's zlib stands in if the zstd CLI is missing, and the table says so)
#
# The sidecar runs with default flags except --listen (a free port on 127.0.0.1), --spool-dir
# (a temp dir) and --upstream https://127.0.0.1:1: a dead upstream, so nothing is delivered and
# nothing needs TLS, and the spool keeps what was accepted. Everything stays on 127.0.0.1, every
# client loop is bounded in count and time, and the script stops by itself.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
FLOODS=${FLOODS:-"bodies envelopes stalled-body stalled-headers brotli zstd"}
SCALE=${SCALE:-1}
ZSTD_BOMB_GIB=${ZSTD_BOMB_GIB:-10}

if [ -n "${SIDECAR_BIN:-}" ]; then
  BIN="$SIDECAR_BIN"
else
  BIN="$root/target/release/sentry-sidecar"
  [ -x "$BIN" ] || cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi

work=$(mktemp -d /tmp/sidecar-floods.XXXXXX)
sidecar=""
cleanup() {
  [ -n "$sidecar" ] && kill -9 "$sidecar" 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# A client per connection: 2,200 sockets at once in flood.py alone.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- the zstd bomb -------------------------------------------------------------------------
zstd_args=()
if [[ " $FLOODS " == *" zstd "* ]]; then
  if command -v zstd >/dev/null; then
    head -c "${ZSTD_BOMB_GIB}G" /dev/zero | zstd -q -c > "$work/bomb.zst"
    zstd_args=(--zstd "$work/bomb.zst" --zstd-encoding zstd --zstd-size "${ZSTD_BOMB_GIB} GiB")
  else
    echo "no zstd CLI: a gzip bomb (Python zlib) stands in for the zstd bombs" >&2
    python3 - "$work/bomb.gz" "$ZSTD_BOMB_GIB" <<'PY'
import sys, zlib
c = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
zeros = bytes(1 << 20)
with open(sys.argv[1], "wb") as f:
    for _ in range(int(sys.argv[2]) << 10):
        f.write(c.compress(zeros))
    f.write(c.flush())
PY
    zstd_args=(--zstd "$work/bomb.gz" --zstd-encoding gzip --zstd-size "${ZSTD_BOMB_GIB} GiB")
  fi
fi

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

stop_sidecar() {
  kill -TERM "$sidecar" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$sidecar" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$sidecar" 2>/dev/null || true
  wait "$sidecar" 2>/dev/null || true
  sidecar=""
}

echo "binary: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))" >&2
for f in $FLOODS; do
  port=$(free_port)
  mkdir -p "$work/spool-$f"
  "$BIN" --listen "127.0.0.1:$port" --upstream https://127.0.0.1:1 --spool-dir "$work/spool-$f" \
    >"$work/sidecar-$f.log" 2>&1 &
  sidecar=$!
  python3 "$here/flood.py" wait --port "$port"
  echo "$(date -u +%H:%M:%S) flood $f" >&2
  if ! timeout 260 python3 "$here/flood.py" run --flood "$f" --port "$port" --pid "$sidecar" \
      --scale "$SCALE" "${zstd_args[@]}" >>"$work/results.jsonl"; then
    echo "flood $f did not finish (see $work/sidecar-$f.log with KEEP_WORK=1)" >&2
  fi
  kill -0 "$sidecar" 2>/dev/null || echo "the sidecar died during flood $f" >&2
  stop_sidecar
  rm -rf "$work/spool-$f"
done

python3 "$here/flood.py" table "$work/results.jsonl"
