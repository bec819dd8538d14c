-- wrk script for the management bench: GETs one path with a bearer token and prints the run
-- as one JSON line with p50/p95/p99 (non-2xx answers count as errors).
--
--   WRK_LABEL=name wrk -t2 -c100 -d8s -s bench/wrk/get.lua URL -- TOKEN
function init(args)
  wrk.method = "GET"
  if args[1] and args[1] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[1]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local secs = summary.duration / 1e6
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    '{"tool": "wrk", "label": "%s", "requests": %d, "errors": %d, "rps": %.1f, ' ..
    '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "max": %d}}\n',
    os.getenv("WRK_LABEL") or "wrk", summary.requests, errors, summary.requests / secs,
    p(50), p(95), p(99), latency.max))
end
