-- wrk script for bench/run.py: POST an authenticated MCP tools/call and check
-- every response (2xx, a "result", not "isError":true).
--
--   MCP_TOKEN=<access token> wrk -t1 -c64 -d10s -s bench/mcp_call.lua http://127.0.0.1:PORT/mcp
--   wrk ... -s bench/mcp_call.lua URL -- <access token>       (same, token as a script argument)
--
-- Optional: MCP_SESSION=<Mcp-Session-Id> adds that header (SESSIONS=on);
-- MCP_BODY=<JSON-RPC request> replaces the default tools/call of echo_message
-- (its '"id":1,' becomes a counter: each request has its own id);
-- MCP_EXPECT=<text> must appear in every response body (e.g. '"result":5'),
-- so a server that answers the wrong thing fast is counted as failing.
-- done() prints one line "BENCHJSON {...}" (requests, duration, latency
-- percentiles in microseconds, failures by kind, a few failure samples),
-- which run.py parses; failures are also printed readably.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local token = args[1] or os.getenv("MCP_TOKEN")
   if token == nil or token == "" then
      error("mcp_call.lua: give the access token as MCP_TOKEN or as the first script argument")
   end
   wrk.method = "POST"
   wrk.headers["Authorization"] = "Bearer " .. token
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Accept"] = "application/json, text/event-stream"
   wrk.headers["MCP-Protocol-Version"] = os.getenv("MCP_PROTOCOL_VERSION") or "2025-06-18"
   local session = os.getenv("MCP_SESSION")
   if session ~= nil and session ~= "" then
      wrk.headers["Mcp-Session-Id"] = session
   end
   wrk.body = os.getenv("MCP_BODY") or
      '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo_message","arguments":{"message":"hi"}}}'
   -- Every request gets its own JSON-RPC id, as a real client's do (the
   -- server tracks in-flight ids for cancellation and warns about reuse).
   local at = string.find(wrk.body, '"id":1,', 1, true)
   if at ~= nil then
      body_head = string.sub(wrk.body, 1, at + 4)
      body_tail = string.sub(wrk.body, at + 6)
   end
   expect = os.getenv("MCP_EXPECT")
   if expect == "" then expect = nil end
   ok = 0
   bad_status = 0
   no_result = 0
   is_error = 0
   unexpected = 0
   samples = ""
   nsamples = 0
end

counter = 0

function request()
   if body_head == nil then
      return wrk.request()
   end
   counter = counter + 1
   return wrk.format(nil, nil, nil, body_head .. counter .. body_tail)
end

local function sample(status, body)
   if nsamples < 5 then
      nsamples = nsamples + 1
      local snippet = string.sub(body or "", 1, 200):gsub("[%c\"\\]", " ")
      samples = samples .. status .. ": " .. snippet .. "\n"
   end
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      bad_status = bad_status + 1
      sample(status, body)
   elseif not string.find(body, '"result"', 1, true) then
      no_result = no_result + 1
      sample(status, body)
   elseif string.find(body, '"isError":true', 1, true) or string.find(body, '"isError": true', 1, true) then
      is_error = is_error + 1
      sample(status, body)
   elseif expect ~= nil and not string.find(body, expect, 1, true) then
      unexpected = unexpected + 1
      sample(status, body)
   else
      ok = ok + 1
   end
end

local function json_escape(s)
   return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
   local counts = {ok = 0, bad_status = 0, no_result = 0, is_error = 0, unexpected = 0}
   local allsamples = ""
   for _, t in ipairs(threads) do
      for k, _ in pairs(counts) do
         counts[k] = counts[k] + (t:get(k) or 0)
      end
      allsamples = allsamples .. (t:get("samples") or "")
   end
   local e = summary.errors
   local failed = counts.bad_status + counts.no_result + counts.is_error + counts.unexpected
      + e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"ok":%d,"failed":%d,"bad_status":%d,"no_result":%d,"is_error":%d,"unexpected":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"wrk_non2xx":%d,' ..
      '"samples":"%s"}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      counts.ok, failed, counts.bad_status, counts.no_result, counts.is_error, counts.unexpected,
      e.connect, e.read, e.write, e.timeout, e.status,
      json_escape(allsamples)))
   if failed > 0 then
      io.write(string.format("FAILED RESPONSES: %d (status %d, no result %d, isError %d, unexpected %d, " ..
                             "connect %d, read %d, write %d, timeout %d)\n",
                             failed, counts.bad_status, counts.no_result, counts.is_error, counts.unexpected,
                             e.connect, e.read, e.write, e.timeout))
      io.write(allsamples)
   end
end
