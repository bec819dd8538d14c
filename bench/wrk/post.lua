-- wrk script for the bench: POSTs one JSON body and prints the run as one JSON line, in the
-- shape of `gatehouse-bench load`, so report.py reads both.
--
-- Non-2xx answers count as errors (wrk counts status >= 400 in errors.status).
--
--   WRK_LABEL=name wrk -t1 -cC -dDs --latency -s bench/wrk/post.lua URL -- BODY_FILE [BEARER]
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
  if args[2] and args[2] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[2]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local secs = summary.duration / 1e6
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    '{"tool": "wrk", "label": "%s", "requests": %d, "errors": %d, "elapsed_s": %.3f, "rps": %.1f, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    os.getenv("WRK_LABEL") or "wrk", summary.requests, errors, secs, summary.requests / secs,
    p(50), p(90), p(99), latency.max, latency.mean))
end
