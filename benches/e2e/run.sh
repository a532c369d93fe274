#!/usr/bin/env bash
# End-to-end load bench: the real sentry-sidecar binary against a local HTTPS upstream (nginx),
# driven by wrk with a realistic 2.7 KB error envelope and a fresh event_id per request, at
# concurrency 32 and 256, side by side with the baseline a user would pick instead: nginx as a
# TLS-originating reverse proxy. The sidecar (or the proxy) runs on core 0; wrk and the upstream
# share core 1. Prints one table and the ratios. Everything talks to 127.0.0.1 only.
#
#   bash benches/e2e/run.sh                 # both concurrencies, 15 s each, plus the drain bench
#   DURATION=30 BACKLOG_SECONDS=10 bash benches/e2e/run.sh
#   MILLION=1 bash benches/e2e/run.sh       # also: RSS with 1,000,000 envelopes waiting (slow)
#   ONLY=sidecar BACKLOG_SECONDS=0 ...      # quick iteration: no baseline, no drain bench
#   BACKLOG_CONCURRENCY=256 ...             # build the drain backlog (and measure ingest alone) at c=256
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-15}
BACKLOG_SECONDS=${BACKLOG_SECONDS:-8}
BACKLOG_CONCURRENCY=${BACKLOG_CONCURRENCY:-32}
CONCURRENCIES=${CONCURRENCIES:-"32 256"}
SIDECAR_EXTRA=${SIDECAR_EXTRA:-}

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx)
if [ -n "${SIDECAR_BIN:-}" ]; then
  BIN="$SIDECAR_BIN"   # a prebuilt binary, e.g. for A/B runs of two builds
else
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  BIN="$root/target/release/sentry-sidecar"
fi

work=$(mktemp -d /tmp/sidecar-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/up/nginx.pid" ] && kill "$(cat "$work/up/nginx.pid")" 2>/dev/null || true
  [ -f "$work/proxy/nginx.pid" ] && kill "$(cat "$work/proxy/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# --- certificates: a CA and a server certificate for 127.0.0.1 ---------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

# --- the envelope: fixture 02 (sentry-python error, gzip on the wire) decoded -----------------
python3 - "$root/tests/fixtures/02_sdk_error_gzip.body" "$work/envelope.txt" <<'PY'
import gzip, sys
open(sys.argv[2], "wb").write(gzip.decompress(open(sys.argv[1], "rb").read()))
PY
export ENVELOPE_FILE="$work/envelope.txt"
RAW_BYTES=$(stat -c %s "$ENVELOPE_FILE")

# --- upstream: nginx with TLS + HTTP/2 on core 1, one server per phase --------------------------
# The part both nginx configurations share: one worker on one core, temp paths in the work dir.
nginx_head() { # dir cpu-affinity-mask error-log-level
  cat <<CONF
worker_processes 1;
worker_cpu_affinity $2;
pid $1/nginx.pid;
error_log $1/error.log $3;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1/body; proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fcgi; uwsgi_temp_path $1/uwsgi; scgi_temp_path $1/scgi;
  client_max_body_size 20m;
  client_body_buffer_size 1m;
  keepalive_requests 1000000;
CONF
}

mkdir -p "$work/up"
{ nginx_head "$work/up" 10 "${UP_LOG_LEVEL:-warn}"; cat <<CONF
  http2_max_concurrent_streams 256;
  log_format up '\$connection \$content_length \$status';
  ssl_certificate $work/server.pem;
  ssl_certificate_key $work/server.key;
  server {
    listen 127.0.0.1:18443 ssl http2;
    access_log $work/up/sidecar.log up;
    location / { default_type application/json; return 200 '{"id":"00000000000000000000000000000000"}'; }
  }
  server {
    listen 127.0.0.1:18444 ssl http2;
    access_log $work/up/proxy.log up;
    location / { default_type application/json; return 200 '{"id":"00000000000000000000000000000000"}'; }
  }
}
CONF
} > "$work/up/nginx.conf"
"$NGINX" -c "$work/up/nginx.conf" -p "$work/up"

# --- baseline: nginx as a TLS-originating reverse proxy on core 0 --------------------------------
mkdir -p "$work/proxy"
{ nginx_head "$work/proxy" 01 warn; cat <<CONF
  upstream sentry { server 127.0.0.1:18444; keepalive 64; }
  server {
    listen 127.0.0.1:13001 backlog=4096;
    location / {
      proxy_pass https://sentry;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_trusted_certificate $work/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name 127.0.0.1;
      proxy_ssl_session_reuse on;
    }
  }
}
CONF
} > "$work/proxy/nginx.conf"
"$NGINX" -c "$work/proxy/nginx.conf" -p "$work/proxy"

# --- helpers -------------------------------------------------------------------------------------
clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# utime+stime per thread name, "name=ticks ..." (the sidecar: runtime worker vs spool writer).
thread_ticks() { for t in /proc/"$1"/task/*; do echo "$(cat "$t/comm" 2>/dev/null) $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null)"; done |
  awk '$2 != "" {s[$1] += $2} END {for (k in s) printf "%s=%d ", k, s[k]}'; }
# Context switches of all the process's threads (voluntary + involuntary): thread hand-offs cost.
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
count() { if [ -f "$1" ]; then grep -c ' 200$' "$1" || true; else echo 0; fi; }
conns() { if [ -f "$1" ]; then awk '{print $1}' "$1" | sort -u | wc -l; else echo 0; fi; }
avg_body() { awk '{s += $2; n++} END {if (n) printf "%.0f", s / n; else print 0}' "$1"; }
wait_for_count() { # file target seconds
  local end=$((SECONDS + $3))
  while [ "$(count "$1")" -lt "$2" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
}
nginx_worker() { pgrep -P "$(cat "$1")" | head -1; }

start_sidecar() { # upstream-port extra-args...
  local port=$1; shift
  rm -rf "$work/spool"
  taskset -c 0 "$BIN" --listen 127.0.0.1:13000 --upstream "https://127.0.0.1:$port" --ca-file "$work/ca.pem" \
    --spool-dir "$work/spool" --log-level "${SIDECAR_LOG:-warn}" $SIDECAR_EXTRA "$@" 2>"$work/sidecar.log" &
  SIDECAR=$!
  pids+=("$SIDECAR")
  for _ in $(seq 100); do curl -sf http://127.0.0.1:13000/readyz >/dev/null && return; sleep 0.1; done
  echo "sidecar did not start" >&2; cat "$work/sidecar.log" >&2; exit 1
}

run_wrk() { # url concurrency -> prints RESULT line
  taskset -c 1 wrk -t2 -c"$2" -d"${DURATION}s" --latency -s "$here/post.lua" "$1" 2>&1 | grep '^RESULT'
}
field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }

results=()
THREADS=()
LATENCIES=()
measure() { # name url log pid concurrency
  local name=$1 url=$2 log=$3 pid=$4 c=$5
  local before_count; before_count=$(count "$log")
  local t0; t0=$(cpu_ticks "$pid")
  local s0; s0=$(ctx_switches "$pid")
  local th0; th0=$(thread_ticks "$pid")
  local perf_pid=""
  if [ -n "${PROFILE:-}" ] && [ "$name" = sidecar ]; then
    perf record -e cpu-clock -F 1999 -g -p "$pid" -o "$PROFILE.c$c" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
  fi
  local port=18443; [ "$name" = nginx ] && port=18444
  echo 0 > "$work/peak_conns"
  ( peak=0; while kill -0 "$pid" 2>/dev/null; do
      n=$(ss -Htn state established "( dport = :$port )" 2>/dev/null | wc -l)
      [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" > "$work/peak_conns"
      sleep 0.2
    done ) &
  local sampler=$!
  local r; r=$(run_wrk "$url" "$c")
  kill "$sampler" 2>/dev/null || true
  [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
  local peak_conns; peak_conns=$(cat "$work/peak_conns")
  local acked=$(( $(field "$r" requests) - $(field "$r" non2xx) - $(field "$r" errors) ))
  wait_for_count "$log" $((before_count + acked)) 60
  local t1; t1=$(cpu_ticks "$pid")
  local s1; s1=$(ctx_switches "$pid")
  local th1; th1=$(thread_ticks "$pid")
  local delivered=$(( $(count "$log") - before_count ))
  local secs; secs=$(awk -v d="$(field "$r" duration_us)" 'BEGIN {print d / 1e6}')
  local rate; rate=$(awk -v a="$acked" -v s="$secs" 'BEGIN {printf "%.0f", a / s}')
  local cpu_us; cpu_us=$(awk -v t=$((t1 - t0)) -v k="$clk" -v n="$delivered" 'BEGIN {if (n) printf "%.1f", t / k * 1e6 / n; else print "inf"}')
  if [ "$name" = sidecar ]; then
    THREADS+=("c=$c: $(awk -v a="$th0" -v b="$th1" -v k="$clk" -v n="$delivered" 'BEGIN {
      split(a, x, " "); for (i in x) { split(x[i], kv, "="); before[kv[1]] = kv[2] }
      split(b, y, " "); for (i in y) { split(y[i], kv, "="); if (n) printf "%s %.1f us/env  ", kv[1], (kv[2] - before[kv[1]]) / k * 1e6 / n }
    }')")
  fi
  local sw; sw=$(awk -v s=$((s1 - s0)) -v n="$delivered" 'BEGIN {if (n) printf "%.2f", s / n; else print "inf"}')
  results+=("$name c=$c|$rate|$(field "$r" p50_us)|$(field "$r" p99_us)|$acked|$delivered|$(field "$r" non2xx)|$peak_conns|$(avg_body "$log")|$cpu_us|$sw|$(hwm_kb "$pid")")
  LATENCIES+=("$name c=$c: p50 $(field "$r" p50_us)  p90 $(field "$r" p90_us)  p99 $(field "$r" p99_us)  p99.9 $(field "$r" p999_us)  max $(field "$r" max_us) us")
  eval "R_${name}_${c}_rate=$rate R_${name}_${c}_p99=$(field "$r" p99_us) R_${name}_${c}_cpu=$cpu_us"
}

# --- runs ----------------------------------------------------------------------------------------
start_sidecar 18443
sleep 1
IDLE_RSS=$(rss_kb "$SIDECAR")
for c in $CONCURRENCIES; do
  measure sidecar http://127.0.0.1:13000/api/42/envelope/ "$work/up/sidecar.log" "$SIDECAR" "$c"
  [ "${ONLY:-}" = sidecar ] || measure nginx http://127.0.0.1:13001/api/42/envelope/ "$work/up/proxy.log" "$(nginx_worker "$work/proxy/nginx.pid")" "$c"
done
SIDECAR_CONNS=$(conns "$work/up/sidecar.log")
SIDECAR_PEAK=$(hwm_kb "$SIDECAR")
kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true

# --- drain: build a backlog with the upstream refusing connections, then let it drain unpaced --
if [ "$BACKLOG_SECONDS" != 0 ]; then
start_sidecar 18445 --drain-rate 0
DURATION=$BACKLOG_SECONDS run_wrk http://127.0.0.1:13000/api/42/envelope/ "$BACKLOG_CONCURRENCY" > "$work/backlog.txt"
# Acks/s while nothing is delivered: what ingest alone (parse, compress, spool, answer) sustains.
b=$(cat "$work/backlog.txt")
BACKLOG_ACK_RATE=$(awk -v n="$(field "$b" requests)" -v e="$(field "$b" non2xx)" -v d="$(field "$b" duration_us)" 'BEGIN {printf "%.0f", (n - e) / (d / 1e6)}')
BACKLOG=$(curl -s http://127.0.0.1:13000/readyz | python3 -c 'import json,sys; print(json.load(sys.stdin)["spool_envelopes"])')
BACKLOG_RSS=$(hwm_kb "$SIDECAR")
kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true
: > "$work/up/sidecar.log"
# Restart on the same spool, now pointing at the healthy upstream.
taskset -c 0 "$BIN" --listen 127.0.0.1:13000 --upstream https://127.0.0.1:18443 --ca-file "$work/ca.pem" \
  --spool-dir "$work/spool" --log-level "${SIDECAR_LOG:-warn}" --drain-rate 0 $SIDECAR_EXTRA 2>>"$work/sidecar.log" &
SIDECAR=$!; pids+=("$SIDECAR")
d0=$(date +%s.%N)
wait_for_count "$work/up/sidecar.log" "$BACKLOG" 300
d1=$(date +%s.%N)
DRAINED=$(count "$work/up/sidecar.log")
DRAIN_RATE=$(awk -v n="$DRAINED" -v a="$d0" -v b="$d1" 'BEGIN {printf "%.0f", n / (b - a)}')
DRAIN_PEAK=$(hwm_kb "$SIDECAR")
kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true
fi

MILLION_LINE=""
if [ "${MILLION:-0}" = 1 ]; then
  start_sidecar 18445 --spool-max-bytes 8GiB
  while :; do
    n=$(curl -s http://127.0.0.1:13000/readyz | python3 -c 'import json,sys; print(json.load(sys.stdin)["spool_envelopes"])')
    [ "$n" -ge 1000000 ] && break
    DURATION=10 run_wrk http://127.0.0.1:13000/api/42/envelope/ 256 >/dev/null
  done
  MILLION_LINE="RSS with $n envelopes waiting: $(rss_kb "$SIDECAR") KB now, $(hwm_kb "$SIDECAR") KB peak"
  kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true
fi

# --- report --------------------------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ)"
echo "envelope: $RAW_BYTES bytes raw; ${DURATION}s per run; sidecar/proxy on core 0, wrk + upstream on core 1"
echo
printf '| %-16s | %9s | %8s | %8s | %8s | %9s | %5s | %8s | %9s | %8s | %7s | %9s |\n' \
  run "acked/s" "p50 us" "p99 us" acked "upstream" non2xx "peak up conns" "up B/env" "CPU us/env" "csw/env" "peak RSS KB"
printf '|%s|\n' "------------------|-----------|----------|----------|----------|-----------|-------|----------|-----------|----------|---------|------------"
for r in "${results[@]}"; do
  IFS='|' read -r a b c d e f g h i j w k <<<"$r"
  printf '| %-16s | %9s | %8s | %8s | %8s | %9s | %5s | %8s | %9s | %10s | %7s | %11s |\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$w" "$k"
done
echo
for t in "${THREADS[@]}"; do echo "sidecar CPU by thread, $t"; done
for l in "${LATENCIES[@]}"; do echo "latency, $l"; done
echo "sidecar: idle RSS ${IDLE_RSS} KB, peak RSS ${SIDECAR_PEAK} KB, distinct upstream TLS connections over all runs: ${SIDECAR_CONNS}"
[ "$BACKLOG_SECONDS" = 0 ] || echo "drain: backlog of ${BACKLOG} envelopes (peak RSS while filling ${BACKLOG_RSS} KB) delivered ${DRAINED} at ${DRAIN_RATE}/s unpaced (peak RSS ${DRAIN_PEAK} KB)"
[ "$BACKLOG_SECONDS" = 0 ] || echo "ingest alone: ${BACKLOG_ACK_RATE} acks/s at c=${BACKLOG_CONCURRENCY} while the upstream refused connections (nothing delivered)"
[ -n "$MILLION_LINE" ] && echo "$MILLION_LINE"
echo
[ "${ONLY:-}" = sidecar ] || for c in $CONCURRENCIES; do
  s=R_sidecar_${c}_rate; n=R_nginx_${c}_rate; sp=R_sidecar_${c}_p99; np=R_nginx_${c}_p99; sc=R_sidecar_${c}_cpu; nc=R_nginx_${c}_cpu
  awk -v c="$c" -v s="${!s}" -v n="${!n}" -v sp="${!sp}" -v np="${!np}" -v sc="${!sc}" -v nc="${!nc}" 'BEGIN {
    printf "c=%s: throughput sidecar/nginx = %.2fx, p99 sidecar/nginx = %.2fx, CPU per envelope sidecar/nginx = %.2fx\n",
      c, s / n, sp / np, sc / nc }'
done
