-- wrk workload against one etcd member's JSON gateway (etcd 3.4: /v3/kv/*).
-- wrk -t1 -c11 -d10s -s bench/lua/etcd.lua http://127.0.0.1:16101 -- MODE KEYS SEED
--   MODE: put | range (linearizable) | serializable (range with "serializable": true)
--         | create (a txn: put a fresh key new-SEED-THREAD-N if its create_revision is 0,
--           i.e. create only; a reply without "succeeded":true counts as a miss)
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
local create_prefix = nil -- create: the fresh keys' prefix, new-SEED-THREAD-
local created = 0
local value64 = nil

function init(args)
   mode = args[1] or mode
   key_count = tonumber(args[2] or key_count)
   local seed = tonumber(args[3] or 1)
   math.randomseed(seed * 1000 + (thread_index or 1))
   value64 = base64(make_value(100))
   local path = "/v3/kv/range"
   wrk.headers["Content-Type"] = "application/json"
   if mode == "create" then
      create_prefix = string.format("new-%d-%d-", seed, thread_index or 1)
      hit_marker = '"succeeded":true'
      return
   elseif mode == "put" then
      path = "/v3/kv/put"
   else
      hit_marker = '"kvs"'
   end
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
   if create_prefix ~= nil then
      created = created + 1
      local key64 = base64(create_prefix .. created)
      local body = '{"compare":[{"key":"' .. key64 .. '","target":"CREATE","create_revision":"0"}],'
         .. '"success":[{"request_put":{"key":"' .. key64 .. '","value":"' .. value64 .. '"}}]}'
      return wrk.format("POST", "/v3/kv/txn", nil, body)
   end
   return requests[math.random(key_count)]
end
