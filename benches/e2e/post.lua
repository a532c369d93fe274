-- wrk script: POSTs a real 2.7 KB sentry-python error envelope (fixture 02, decoded) with a fresh
-- event_id per request (same length, so item lengths stay right), over keep-alive connections.
local f = assert(io.open(os.getenv("ENVELOPE_FILE"), "rb"))
local template = f:read("*a")
f:close()
local original_id = "5afe190d31734655bc997ee41b47bc65"
local auth = "Sentry sentry_key=0123456789abcdef0123456789abcdef, sentry_version=7, sentry_client=sentry.python/2.75.0"
local counter = 0
local salt

-- DELAY_MS > 0: each connection waits that long after an answer before its next request, so
-- a few connections offer a fixed low rate (rates.sh) instead of as many requests as they can.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

setup = function(thread)
  thread:set("salt", math.random(0, 0x7fffffff))
end

init = function(args)
  math.randomseed(os.time() + (salt or 0))
  salt = math.random(0, 0x7fffffff)
end

request = function()
  counter = counter + 1
  local id = string.format("%08x%08x%08x%08x", salt, math.random(0, 0x7fffffff), counter, math.random(0, 0x7fffffff))
  local body = template:gsub(original_id, id)
  return wrk.format("POST", nil, {
    ["X-Sentry-Auth"] = auth,
    ["Content-Type"] = "application/x-sentry-envelope",
  }, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
