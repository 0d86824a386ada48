-- wrk script: one Mailmodo activity callback per request ("opened"), each a new event for a
-- new recipient with its CleverTap ID, so no call is a duplicate and none is parked.
--
-- Environment: BENCH_TAG (run tag), BENCH_SECRET (the bridge's Mailmodo secret),
-- BENCH_RESULT_FILE (where done() also writes its summary line).
-- done() prints: BENCH_RESULT ok=.. non2xx=.. errors=.. duration_s=.. ok_rps=.. p50_ms=.. p99_ms=..

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   sent, ok, non2xx = 0, 0, 0
   tag = os.getenv("BENCH_TAG") or "run"
   path = "/mailmodo/" .. (os.getenv("BENCH_SECRET") or "") .. "/events"
   headers = { ["Content-Type"] = "application/json" }
   prefix = tag .. "-t" .. tid .. "-"
end

local body_fmt = '{"event":"opened","email":"%s@bench.example.com","clevertap_id":"__%s",'
   .. '"event_id":"%s","timestamp":1700000000,"campaign_name":"Benchmark Welcome",'
   .. '"campaign_id":"0b53e1bf-84ae-4198-9184-8a4d6e1fa3dd","campaign_type":"TRIGGERED",'
   .. '"email_subject":"Hello from the benchmark","email_type":"Promotional",'
   .. '"template_name":"Welcome v2","apple_privacy_open":false}'

function request()
   sent = sent + 1
   local who = prefix .. sent
   return wrk.format("POST", path, headers, string.format(body_fmt, who, who, who))
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
   else
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local total_ok = 0
   local total_non2xx = 0
   for _, t in ipairs(threads) do
      total_ok = total_ok + t:get("ok")
      total_non2xx = total_non2xx + t:get("non2xx")
   end
   local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout
   local seconds = summary.duration / 1e6
   local line = string.format(
      "BENCH_RESULT ok=%d non2xx=%d errors=%d duration_s=%.3f ok_rps=%.1f p50_ms=%.2f p99_ms=%.2f",
      total_ok, total_non2xx, errors, seconds, total_ok / seconds,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000)
   print(line)
   local path = os.getenv("BENCH_RESULT_FILE")
   if path and path ~= "" then
      local f = io.open(path, "w")
      f:write(line .. "\n")
      f:close()
   end
end
