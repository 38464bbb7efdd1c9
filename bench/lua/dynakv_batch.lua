-- wrk workload against one dynakv node's batch API (POST /v1/batch).
-- wrk -t1 -c11 -d10s -s bench/lua/dynakv_batch.lua http://127.0.0.1:18001 -- MODE CONSISTENCY KEYS SEED BATCH
--   MODE: get | put; CONSISTENCY: one | quorum | all; KEYS: key space size; SEED: rng
--   seed; BATCH: keys per request (at most 100 gets or 25 puts).
-- Each request names BATCH keys drawn uniformly from key00000000 .. key(KEYS-1); puts
-- send 100-byte values. Keys and values are base64 in the JSON body, as the API requires.
-- A 200 whose results hold an error (or, for gets, a missing value) counts as a miss.

local here = string.match(string.sub(debug.getinfo(1, "S").source, 2), "^(.*)/[^/]*$") or "."
dofile(here .. "/common.lua")

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
   local out = {}
   for i = 1, #data, 3 do
      local a, b, c = string.byte(data, i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local c1 = math.floor(n / 262144) % 64
      local c2 = math.floor(n / 4096) % 64
      local c3 = math.floor(n / 64) % 64
      local c4 = n % 64
      table.insert(out, string.sub(B64, c1 + 1, c1 + 1) .. string.sub(B64, c2 + 1, c2 + 1)
         .. (b and string.sub(B64, c3 + 1, c3 + 1) or "=")
         .. (c and string.sub(B64, c4 + 1, c4 + 1) or "="))
   end
   return table.concat(out)
end

local POOL = 2000 -- pre-formatted requests per thread: request() only picks one
local requests = {}
local mode = "get"
local common_response = response

function init(args)
   mode = args[1] or mode
   local consistency = args[2] or "one"
   local key_count = tonumber(args[3] or 10000)
   local seed = tonumber(args[4] or 1)
   local batch = tonumber(args[5] or 25)
   math.randomseed(seed * 1000 + (thread_index or 1))
   wrk.headers["Content-Type"] = "application/json"
   local value64 = base64(make_value(100))
   local keys64 = {}
   for i = 0, key_count - 1 do
      keys64[i + 1] = base64(make_key(i))
   end
   local path = "/v1/batch?consistency=" .. consistency
   for r = 1, POOL do
      local ops = {}
      for j = 1, batch do
         local key64 = keys64[math.random(key_count)]
         if mode == "put" then
            ops[j] = '{"op":"put","key":"' .. key64 .. '","value":"' .. value64 .. '"}'
         else
            ops[j] = '{"op":"get","key":"' .. key64 .. '"}'
         end
      end
      requests[r] = wrk.format("POST", path, nil, '{"ops":[' .. table.concat(ops, ",") .. "]}")
   end
end

function request()
   return requests[math.random(POOL)]
end

function response(status, headers, body)
   common_response(status, headers, body)
   if status == 200 and body ~= nil then
      local bad = string.find(body, '"error"', 1, true)
         or (mode == "get" and string.find(body, '"status":404', 1, true))
      if bad then
         misses = misses + 1
         if sample_error == nil then
            sample_error = "batch item " .. string.sub(body, 1, 300)
         end
      end
   end
end
