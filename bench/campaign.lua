-- wrk script: one CleverTap campaign webhook call per request, each for a new recipient.
--
-- Body: CleverTap's default "profile variables" body (broadcast sample from CleverTap's docs,
-- one profile). The email and objectId are unique per request (run tag + wrk thread + counter),
-- so no call is a duplicate of another and every 2xx stands for one new delivery row.
--
-- Environment (read with os.getenv, wrk passes no arguments to setup/done):
--   BENCH_TAG          run tag put into every email (default "run")
--   BENCH_AUTH         "basic" (default) or "header" (X-Bridge-Secret)
--   BENCH_SECRET       the bridge's CleverTap secret (for BENCH_AUTH=header)
--   BENCH_BASIC        base64 of "user:secret" (for BENCH_AUTH=basic)
--   BENCH_CAMPAIGN     Mailmodo campaign id in the path (default "bench-campaign")
--   BENCH_IDS_FILE     if set, every delivery id answered with a 2xx is written there
--                      (one per line) for the durability check
--   BENCH_RESULT_FILE  if set, the summary line below is also written there
--   BENCH_CLOSE        "1": send "Connection: close" (a new connection per call, as CleverTap)
--
-- done() prints one machine-readable line:
--   BENCH_RESULT sent=.. ok=.. non2xx=.. not_accepted=.. errors=.. requests=.. duration_s=..
--                rps=.. ok_rps=.. p50_ms=.. p90_ms=.. p99_ms=.. max_ms=..

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("tid", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   sent, ok, non2xx, not_accepted = 0, 0, 0, 0
   ids = {}
   tag = os.getenv("BENCH_TAG") or "run"
   collect = os.getenv("BENCH_IDS_FILE") ~= nil and os.getenv("BENCH_IDS_FILE") ~= ""
   headers = { ["Content-Type"] = "application/json" }
   if (os.getenv("BENCH_AUTH") or "basic") == "header" then
      headers["X-Bridge-Secret"] = os.getenv("BENCH_SECRET") or ""
   else
      headers["Authorization"] = "Basic " .. (os.getenv("BENCH_BASIC") or "")
   end
   if os.getenv("BENCH_CLOSE") == "1" then
      headers["Connection"] = "close"
   end
   path = "/clevertap/campaigns/" .. (os.getenv("BENCH_CAMPAIGN") or "bench-campaign")
   prefix = tag .. "-t" .. tid .. "-"
end

local body_fmt = '{"targetId":1472124953,'
   .. '"key_values":{"PromoCode":"MT50","PowerUser":"true"},'
   .. '"profiles":[{"Email":"%s@bench.example.com","Identity":"%s",'
   .. '"ObjectId":"-g%s",'
   .. '"ProfileData":{"Last Score":308,"High Score":308,"Replayed":true},'
   .. '"Event_properties":{"Score":1200,"Game Mode":"Practice","Rating":1},'
   .. '"Push_token":"19403aa5d3bb376769a8101c9cbf22159cb1836117659cc684a71243589982ea"}]}'

function request()
   sent = sent + 1
   local who = prefix .. sent
   return wrk.format("POST", path, headers, string.format(body_fmt, who, who, who))
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      -- A distinct recipient must be accepted, never answered as a duplicate.
      if not string.find(body, '"accepted":1', 1, true) then
         not_accepted = not_accepted + 1
      end
      if collect then
         local list = string.match(body, '"ids":%[([%d,]*)%]')
         if list then
            for id in string.gmatch(list, "%d+") do ids[#ids + 1] = id end
         end
      end
   else
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local t_sent, t_ok, t_bad, t_na = 0, 0, 0, 0
   local ids_file = os.getenv("BENCH_IDS_FILE")
   local out = nil
   if ids_file and ids_file ~= "" then out = io.open(ids_file, "w") end
   for _, thread in ipairs(threads) do
      t_sent = t_sent + thread:get("sent")
      t_ok = t_ok + thread:get("ok")
      t_bad = t_bad + thread:get("non2xx")
      t_na = t_na + thread:get("not_accepted")
      if out then
         local list = thread:get("ids")
         for _, id in ipairs(list) do out:write(id, "\n") end
      end
   end
   if out then out:close() end
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.timeout
   local secs = summary.duration / 1e6
   local line = string.format(
      "BENCH_RESULT sent=%d ok=%d non2xx=%d not_accepted=%d errors=%d requests=%d "
         .. "duration_s=%.3f rps=%.1f ok_rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f",
      t_sent, t_ok, t_bad, t_na, errors, summary.requests, secs, summary.requests / secs,
      t_ok / secs, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000)
   io.write(line, "\n")
   local result_file = os.getenv("BENCH_RESULT_FILE")
   if result_file and result_file ~= "" then
      local f = io.open(result_file, "w")
      f:write(line, "\n")
      f:close()
   end
end
