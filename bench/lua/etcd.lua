-- wrk workload against one etcd member's JSON gateway (etcd 3.4: /v3/kv/*).
-- wrk -t1 -c11 -d10s -s bench/lua/etcd.lua http://127.0.0.1:16101 -- MODE KEYS SEED
--   MODE: put | range (linearizable) | serializable (range with "serializable": true)
-- Same key space and 100-byte values as bench/lua/dynakv.lua, base64-encoded as
-- the gateway requires. A range whose reply has no "kvs" counts as a miss.

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

local mode = "range"
local key_count = 10000
local requests = {} -- every request pre-formatted: request() only picks one

function init(args)
   mode = args[1] or mode
   key_count = tonumber(args[2] or key_count)
   local seed = tonumber(args[3] or 1)
   math.randomseed(seed * 1000 + (thread_index or 1))
   local value64 = base64(make_value(100))
   local path = "/v3/kv/range"
   if mode == "put" then
      path = "/v3/kv/put"
   else
      hit_marker = '"kvs"'
   end
   wrk.headers["Content-Type"] = "application/json"
   for i = 0, key_count - 1 do
      local key64 = base64(make_key(i))
      local body = '{"key":"' .. key64 .. '"}'
      if mode == "put" then
         body = '{"key":"' .. key64 .. '","value":"' .. value64 .. '"}'
      elseif mode == "serializable" then
         body = '{"key":"' .. key64 .. '","serializable":true}'
      end
      requests[i + 1] = wrk.format("POST", path, nil, body)
   end
end

function request()
   return requests[math.random(key_count)]
end
