#!/usr/bin/env bash
# What run.sh does not cover: the rates most pods see, and an upstream that is neither fast nor
# HTTP/2. Same machinery (common.sh): the real release binary, nginx as the TLS upstream on core 1,
# wrk (with a per-connection delay for fixed rates) on core 1, the sidecar or the baseline proxy
# (nginx as a TLS-originating reverse proxy) on core 0, everything on 127.0.0.1.
#
#   bash benches/e2e/rates.sh              # fixed rates (RATES, default 100 1000 5000 /s) and idle
#                                          # (IDLE_SECONDS, default 60): CPU, per envelope, context
#                                          # switches, wake-ups/s, ack p50/p99, sidecar beside nginx
#   MODE=h1 bash benches/e2e/rates.sh      # an HTTP/1.1-only upstream 50 ms away: forwarded/s and
#                                          # upstream connections, sidecar beside nginx (c=32)
#   SIDECAR_BIN=path ...                   # a prebuilt binary (A/B runs)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
DURATION=${DURATION:-20}
MODE=${MODE:-rates}
RATES=${RATES:-"100 1000 5000"}
IDLE_SECONDS=${IDLE_SECONDS:-60}
SIDECAR_EXTRA=${SIDECAR_EXTRA:-}
H1_LATENCY=${H1_LATENCY:-0.05}

# shellcheck source=common.sh
source "$here/common.sh"

ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
if [ "$MODE" = h1 ] && [ ! -f "$ECHO_MODULE" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-http-echo >/dev/null
fi

# --- upstream on core 1: HTTP/2 and HTTP/1.1 by ALPN (as Sentry's ingest), or HTTP/1.1 only with latency
mkdir -p "$work/up"
{
  [ "$MODE" = h1 ] && echo "load_module $ECHO_MODULE;"
  nginx_head "$work/up" 10 warn
  cat <<CONF
  http2_max_concurrent_streams 256;
  log_format up '\$connection \$content_length \$status';
  ssl_certificate $work/server.pem;
  ssl_certificate_key $work/server.key;
CONF
  for port in 18443 18444; do
    log=sidecar; [ $port = 18444 ] && log=proxy
    if [ "$MODE" = h1 ]; then
      echo "  server { listen 127.0.0.1:$port ssl; access_log $work/up/$log.log up;"
      echo "    location / { default_type application/json; echo_sleep $H1_LATENCY; echo '{\"id\":\"00000000000000000000000000000000\"}'; } }"
    else
      echo "  server { listen 127.0.0.1:$port ssl http2; access_log $work/up/$log.log up;"
      echo "    location / { default_type application/json; return 200 '{\"id\":\"00000000000000000000000000000000\"}'; } }"
    fi
  done
  echo "}"
} > "$work/up/nginx.conf"
"$NGINX" -c "$work/up/nginx.conf" -p "$work/up"

# --- baseline proxy on core 0 ----------------------------------------------------------------------
start_proxy
PROXY_MASTER=$(cat "$work/proxy/nginx.pid")
PROXY=""
for _ in $(seq 50); do PROXY=$(pgrep -P "$PROXY_MASTER" | head -1 || true); [ -n "$PROXY" ] && break; sleep 0.1; done

# Voluntary context switches of every thread: each is a wake-up after a sleep.
wakeups() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

rows=()
# name url pid conns delay-ms: one fixed-rate run
fixed_rate() {
  local name=$1 url=$2 pid=$3 c=$4 d=$5 log=$6
  local n0; n0=$(count "$log")
  local t0; t0=$(cpu_ticks "$pid")
  local s0; s0=$(ctx_switches "$pid")
  local w0; w0=$(wakeups "$pid")
  local r; r=$(DELAY_MS=$d taskset -c 1 wrk -t1 -c"$c" -d"${DURATION}s" --latency -s "$here/post.lua" "$url" 2>&1 | grep '^RESULT')
  local acked=$(( $(field "$r" requests) - $(field "$r" non2xx) - $(field "$r" errors) ))
  wait_for_count "$log" $((n0 + acked)) 60
  local t1; t1=$(cpu_ticks "$pid")
  local s1; s1=$(ctx_switches "$pid")
  local w1; w1=$(wakeups "$pid")
  local secs; secs=$(awk -v d="$(field "$r" duration_us)" 'BEGIN {print d / 1e6}')
  rows+=("$(awk -v name="$name" -v a="$acked" -v s="$secs" -v t=$((t1 - t0)) -v k="$clk" -v sw=$((s1 - s0)) -v w=$((w1 - w0)) \
    -v p50="$(field "$r" p50_us)" -v p99="$(field "$r" p99_us)" 'BEGIN {
      printf "| %-8s | %8.0f | %6.1f %% | %8.0f | %7.2f | %8.1f | %7s | %7s |", name, a / s, t / k / s * 100,
        (a ? t / k * 1e6 / a : 0), (a ? sw / a : 0), w / s, p50, p99 }')")
}

idle() { # name pid...: wake-ups per second over IDLE_SECONDS with nothing to do
  local name=$1; shift
  local w0=0 w1=0 t0=0 t1=0 p
  for p in "$@"; do w0=$((w0 + $(wakeups "$p"))); t0=$((t0 + $(cpu_ticks "$p"))); done
  sleep "$IDLE_SECONDS"
  for p in "$@"; do w1=$((w1 + $(wakeups "$p"))); t1=$((t1 + $(cpu_ticks "$p"))); done
  rows+=("$(awk -v name="$name" -v w=$((w1 - w0)) -v t=$((t1 - t0)) -v k="$clk" -v s="$IDLE_SECONDS" 'BEGIN {
    printf "| %-8s | %8s | %6.2f %% | %8s | %7s | %8.2f | %7s | %7s |", name " idle", "0", t / k / s * 100, "-", "-", w / s, "-", "-" }')")
}

echo "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%MZ); mode $MODE; ${DURATION}s per run"
if [ "$MODE" = rates ]; then
  start_sidecar 18443
  sleep 2
  idle sidecar "$SIDECAR"
  idle nginx "$PROXY_MASTER" "$PROXY"
  for rate in $RATES; do
    # Connections and the delay between a connection's requests that offer about `rate`/s.
    case $rate in
      100) c=4 d=40 ;; 1000) c=4 d=4 ;; 5000) c=6 d=1 ;; *) c=4 d=$((4000 / rate)) ;;
    esac
    rows+=("| **offered ~$rate/s** ($c connections, ${d} ms apart) | | | | | | | |")
    fixed_rate sidecar http://127.0.0.1:13000/api/42/envelope/ "$SIDECAR" $c $d "$work/up/sidecar.log"
    fixed_rate nginx http://127.0.0.1:13001/api/42/envelope/ "$PROXY" $c $d "$work/up/proxy.log"
  done
  echo
  printf '| %-8s | %8s | %8s | %8s | %7s | %8s | %7s | %7s |\n' run "env/s" "CPU" "CPU us/env" "csw/env" "wakeups/s" "p50 us" "p99 us"
  echo "|---|---|---|---|---|---|---|---|"
  for r in "${rows[@]}"; do echo "$r"; done
  echo "(nginx: its worker; idle: master + worker. csw = voluntary + involuntary context switches; wake-ups = voluntary.)"
  kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true
else
  # HTTP/1.1 upstream with latency: the sidecar acks at once and forwards; nginx forwards in step.
  peak_sampler() { # port file
    ( peak=0; while :; do
        n=$(ss -Htn state established "( dport = :$1 )" 2>/dev/null | wc -l)
        [ "$n" -gt "$peak" ] && peak=$n && echo "$peak" > "$2"
        sleep 0.2
      done ) >/dev/null 2>&1 &
    echo $!
  }
  start_sidecar 18443
  echo 0 > "$work/peak_s"
  ps=$(peak_sampler 18443 "$work/peak_s")
  r=$(run_wrk http://127.0.0.1:13000/api/42/envelope/ 32)
  n_end=$(count "$work/up/sidecar.log")
  acked=$(( $(field "$r" requests) - $(field "$r" non2xx) - $(field "$r" errors) ))
  d0=$(date +%s.%N)
  wait_for_count "$work/up/sidecar.log" "$acked" 300
  d1=$(date +%s.%N)
  kill "$ps" 2>/dev/null || true
  total=$(count "$work/up/sidecar.log")
  secs=$(awk -v d="$(field "$r" duration_us)" 'BEGIN {print d / 1e6}')
  echo "sidecar: acked $acked at $(awk -v a="$acked" -v s="$secs" 'BEGIN {printf "%.0f", a / s}')/s (p99 $(field "$r" p99_us) us);" \
    "forwarded $n_end during the ${DURATION}s load ($(awk -v n="$n_end" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')/s)," \
    "all $total after $(awk -v a="$d0" -v b="$d1" -v s="$secs" 'BEGIN {printf "%.1f", s + b - a}') s" \
    "($(awk -v n="$total" -v a="$d0" -v b="$d1" -v s="$secs" 'BEGIN {printf "%.0f", n / (s + b - a)}')/s overall);" \
    "peak upstream connections $(cat "$work/peak_s"), distinct $(conns "$work/up/sidecar.log")"
  kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true
  echo 0 > "$work/peak_p"
  pp=$(peak_sampler 18444 "$work/peak_p")
  r=$(run_wrk http://127.0.0.1:13001/api/42/envelope/ 32)
  kill "$pp" 2>/dev/null || true
  acked=$(( $(field "$r" requests) - $(field "$r" non2xx) - $(field "$r" errors) ))
  secs=$(awk -v d="$(field "$r" duration_us)" 'BEGIN {print d / 1e6}')
  echo "nginx:   acked = forwarded $acked at $(awk -v a="$acked" -v s="$secs" 'BEGIN {printf "%.0f", a / s}')/s" \
    "(p50 $(field "$r" p50_us) us, p99 $(field "$r" p99_us) us: the app waits for the upstream);" \
    "peak upstream connections $(cat "$work/peak_p"), distinct $(conns "$work/up/proxy.log")"
fi
