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
#
# benches/e2e/rates.sh measures the other situations: fixed low rates and idle (what a fleet pays),
# and an HTTP/1.1-only upstream 50 ms away.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-15}
BACKLOG_SECONDS=${BACKLOG_SECONDS:-8}
BACKLOG_CONCURRENCY=${BACKLOG_CONCURRENCY:-32}
CONCURRENCIES=${CONCURRENCIES:-"32 256"}
SIDECAR_EXTRA=${SIDECAR_EXTRA:-}

# shellcheck source=common.sh
source "$here/common.sh"

# --- upstream: nginx with TLS + HTTP/2 on core 1, one server per phase --------------------------
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
start_proxy


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
