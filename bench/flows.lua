-- wrk script for bench/run.py: the other flows, chosen by BENCH_FLOW, each
-- response checked; done() prints "BENCHJSON {...}" like mcp_call.lua.
--
--   BENCH_FLOW=initialize  MCP_TOKEN=<access>   ... URL=/mcp
--       POST initialize (protocol 2025-06-18); ok = 2xx, a "result" and an
--       Mcp-Session-Id header (SESSIONS=on). Every request creates a session.
--   BENCH_FLOW=refresh     REFRESH_TOKENS=<t1,t2,...> CLIENT_ID=.. CLIENT_SECRET=..   URL=/oauth/token
--       refresh grant, CHAINED: each request uses a token no one has used
--       yet (a pool seeded with one refresh token per family, one per
--       connection plus one: wrk calls request() once at start-up to verify
--       the script, and that token is never sent); each response's new refresh_token goes back into
--       the pool. This measures real rotation, not the grace replay.
--       If the pool runs dry (a failed response loses its family) the last
--       token seen is replayed and counted as "pool_empty".
--   BENCH_FLOW=refresh_grace REFRESH_TOKENS=<t> CLIENT_ID=.. CLIENT_SECRET=..
--       the SAME refresh token every time: the first request rotates it,
--       the rest are answered from the grace window (same successor).
--   BENCH_FLOW=register    DCR_AUTH_TOKEN=<iat>   URL=/oauth/register
--       dynamic client registration; ok = 201 with a "client_id".

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local function urlencode(s)
   return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local function split(s)
   local out = {}
   for item in string.gmatch(s or "", "[^,]+") do
      table.insert(out, item)
   end
   return out
end

function init(args)
   flow = os.getenv("BENCH_FLOW") or ""
   ok = 0
   bad_status = 0
   no_result = 0
   is_error = 0
   pool_empty = 0
   samples = ""
   nsamples = 0
   if flow == "initialize" then
      local token = os.getenv("MCP_TOKEN")
      if token == nil or token == "" then error("flows.lua: MCP_TOKEN is required") end
      wrk.method = "POST"
      wrk.headers["Authorization"] = "Bearer " .. token
      wrk.headers["Content-Type"] = "application/json"
      wrk.headers["Accept"] = "application/json, text/event-stream"
      wrk.body = '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",' ..
         '"capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}'
   elseif flow == "refresh" or flow == "refresh_grace" then
      client_id = os.getenv("CLIENT_ID")
      client_secret = os.getenv("CLIENT_SECRET")
      pool = split(os.getenv("REFRESH_TOKENS"))
      if client_id == nil or client_secret == nil or #pool == 0 then
         error("flows.lua: CLIENT_ID, CLIENT_SECRET and REFRESH_TOKENS are required")
      end
      last = pool[1]
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
      wrk.headers["Accept"] = "application/json"
      if flow == "refresh_grace" then
         wrk.body = "grant_type=refresh_token&refresh_token=" .. urlencode(pool[1]) ..
            "&client_id=" .. urlencode(client_id) .. "&client_secret=" .. urlencode(client_secret)
      end
   elseif flow == "register" then
      local iat = os.getenv("DCR_AUTH_TOKEN")
      if iat == nil or iat == "" then error("flows.lua: DCR_AUTH_TOKEN is required") end
      wrk.method = "POST"
      wrk.headers["Authorization"] = "Bearer " .. iat
      wrk.headers["Content-Type"] = "application/json"
      wrk.headers["Accept"] = "application/json"
      wrk.body = '{"client_name":"wrk","redirect_uris":["http://127.0.0.1:9/cb"],' ..
         '"grant_types":["authorization_code","refresh_token"],"token_endpoint_auth_method":"client_secret_post"}'
   else
      error("flows.lua: BENCH_FLOW must be initialize, refresh, refresh_grace or register")
   end
end

if os.getenv("BENCH_FLOW") == "refresh" then
   function request()
      local token = table.remove(pool)
      if token == nil then
         pool_empty = pool_empty + 1
         token = last
      end
      local body = "grant_type=refresh_token&refresh_token=" .. urlencode(token) ..
         "&client_id=" .. urlencode(client_id) .. "&client_secret=" .. urlencode(client_secret)
      return wrk.format(nil, nil, nil, body)
   end
end

local function sample(status, body)
   if nsamples < 5 then
      nsamples = nsamples + 1
      local snippet = string.sub(body or "", 1, 200):gsub("[%c\"\\]", " ")
      samples = samples .. status .. ": " .. snippet .. "\n"
   end
end

local function header(headers, name)
   for k, v in pairs(headers) do
      if string.lower(k) == name then return v end
   end
   return nil
end

function response(status, headers, body)
   if status < 200 or status > 299 or (flow == "register" and status ~= 201) then
      bad_status = bad_status + 1
      sample(status, body)
      return
   end
   if flow == "initialize" then
      if not string.find(body, '"result"', 1, true) or header(headers, "mcp-session-id") == nil then
         no_result = no_result + 1
         sample(status, body)
         return
      end
   elseif flow == "register" then
      if not string.find(body, '"client_id"', 1, true) then
         no_result = no_result + 1
         sample(status, body)
         return
      end
   else
      local new = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
      if not string.find(body, '"access_token"', 1, true) or new == nil then
         no_result = no_result + 1
         sample(status, body)
         return
      end
      if flow == "refresh" then
         table.insert(pool, new)
         last = new
      end
   end
   ok = ok + 1
end

local function json_escape(s)
   return (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
   local counts = {ok = 0, bad_status = 0, no_result = 0, is_error = 0, pool_empty = 0}
   local allsamples = ""
   for _, t in ipairs(threads) do
      for k, _ in pairs(counts) do
         counts[k] = counts[k] + (t:get(k) or 0)
      end
      allsamples = allsamples .. (t:get("samples") or "")
   end
   local e = summary.errors
   local failed = counts.bad_status + counts.no_result + counts.is_error
      + e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,' ..
      '"ok":%d,"failed":%d,"bad_status":%d,"no_result":%d,"is_error":%d,"pool_empty":%d,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,"wrk_non2xx":%d,' ..
      '"samples":"%s"}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      counts.ok, failed, counts.bad_status, counts.no_result, counts.is_error, counts.pool_empty,
      e.connect, e.read, e.write, e.timeout, e.status,
      json_escape(allsamples)))
   if failed > 0 or counts.pool_empty > 0 then
      io.write(string.format("FAILED RESPONSES: %d (status %d, no result %d, connect %d, read %d, " ..
                             "write %d, timeout %d); pool empty %d\n",
                             failed, counts.bad_status, counts.no_result,
                             e.connect, e.read, e.write, e.timeout, counts.pool_empty))
      io.write(allsamples)
   end
end
