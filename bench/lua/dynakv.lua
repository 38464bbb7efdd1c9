-- wrk workload against one dynakv node's HTTP API.
-- wrk -t1 -c11 -d10s -s bench/lua/dynakv.lua http://127.0.0.1:18001 -- MODE CONSISTENCY KEYS SEED [TOKEN]
--   MODE: put | get | create; CONSISTENCY: one | quorum | all | strong | session; KEYS:
--   key space size; SEED: rng seed; TOKEN: a session token (X-Dynakv-Session) sent with
--   every request, e.g. one a session got back from the API during the preload.
-- Keys are drawn uniformly from key00000000 .. key(KEYS-1); puts send 100-byte values.
-- A get's 2xx reply counts only if it carries the whole 100-byte value (every key holds
-- one: the preload's or a put's), and at consistency=session only if it also carries
-- the session's updated token; anything else counts as a miss.
-- The token is the same on every request (the one the preload's session ended with):
-- the cost measured is a session read's, not a client's token bookkeeping.
-- create: a conditional put (If-None-Match: *, create only) of a fresh key each time,
-- new-SEED-THREAD-N, so every one succeeds; it runs on the strong path whatever
-- CONSISTENCY says (no consistency parameter is sent).

local here = string.match(string.sub(debug.getinfo(1, "S").source, 2), "^(.*)/[^/]*$") or "."
dofile(here .. "/common.lua")

local mode = "get"
local consistency = "quorum"
local key_count = 10000
local value = make_value(100)
local requests = {} -- every request pre-formatted: request() only picks one (wrk's CPU is ours too)
local create_prefix = nil -- create: "/v1/kv/new-SEED-THREAD-"
local created = 0
local create_headers = {["If-None-Match"] = "*"}
local VALUE_BYTES = 100
local common_response = response

function init(args)
   mode = args[1] or mode
   consistency = args[2] or consistency
   key_count = tonumber(args[3] or key_count)
   local seed = tonumber(args[4] or 1)
   math.randomseed(seed * 1000 + (thread_index or 1))
   if mode == "put" or mode == "create" then
      wrk.headers["Content-Type"] = "application/octet-stream"
   end
   if args[5] ~= nil and args[5] ~= "" then
      wrk.headers["X-Dynakv-Session"] = args[5]
   end
   if mode == "create" then
      create_prefix = string.format("/v1/kv/new-%d-%d-", seed, thread_index or 1)
      return
   end
   for i = 0, key_count - 1 do
      local path = "/v1/kv/" .. make_key(i) .. "?consistency=" .. consistency
      if mode == "put" then
         requests[i + 1] = wrk.format("PUT", path, nil, value)
      else
         requests[i + 1] = wrk.format("GET", path)
      end
   end
end

function request()
   if create_prefix ~= nil then
      created = created + 1
      return wrk.format("PUT", create_prefix .. created, create_headers, value)
   end
   return requests[math.random(key_count)]
end

local function miss(why, status, body)
   misses = misses + 1
   if sample_error == nil then
      sample_error = why .. " " .. status .. " " .. string.sub(body or "", 1, 300)
   end
end

function response(status, headers, body)
   common_response(status, headers, body)
   if mode ~= "get" or status < 200 or status > 299 then
      return
   end
   if #(body or "") ~= VALUE_BYTES then
      miss("value of " .. #(body or "") .. " bytes:", status, body)
   elseif consistency == "session"
      and headers["x-dynakv-session"] == nil and headers["X-Dynakv-Session"] == nil then
      miss("no session token:", status, body)
   end
end
