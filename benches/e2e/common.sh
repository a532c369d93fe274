# Shared by the end-to-end bench scripts (sourced, not run): tools, the binary, a work dir that is
# removed on exit, a test CA and server certificate for 127.0.0.1, the envelope, the nginx config head,
# and the measuring helpers. Expects `here`, `root`, `DURATION` and `SIDECAR_EXTRA` to be set.

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

# The baseline: nginx on core 0 as a TLS-originating reverse proxy on :13001 to the upstream's
# :18444 (keep-alive pool of 64, certificate verified), as a user would set it up instead.
start_proxy() {
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
}

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
