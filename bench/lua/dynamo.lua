-- wrk workload against a DynamoDB JSON endpoint (a dynakv node's, or moto_server's).
-- wrk -t1 -c11 -d10s -s bench/lua/dynamo.lua http://127.0.0.1:18301 -- MODE KEYS SEED [TABLE]
--   MODE: put (PutItem) | get (GetItem, eventually consistent: the default);
--   KEYS: key space size; SEED: rng seed; TABLE: table name (default "bench").
-- Items are {"pk": {"S": key}, "v": {"S": 100 bytes}} with the same keys and value size
-- as bench/lua/dynakv.lua, drawn uniformly from key00000000 .. key(KEYS-1); a put
-- replaces a preloaded item, as the native put does. A GetItem reply without "Item"
-- counts as a miss.
-- Every request carries an Authorization header of the SigV4 form (moto_server routes
-- on its credential scope; neither server here checks the signature).

local here = string.match(string.sub(debug.getinfo(1, "S").source, 2), "^(.*)/[^/]*$") or "."
dofile(here .. "/common.lua")

local requests = {} -- every request pre-formatted: request() only picks one
local key_count = 10000

function init(args)
   local mode = args[1] or "get"
   key_count = tonumber(args[2] or key_count)
   local seed = tonumber(args[3] or 1)
   local table_name = args[4] or "bench"
   math.randomseed(seed * 1000 + (thread_index or 1))
   local target = "DynamoDB_20120810.GetItem"
   if mode == "put" then
      target = "DynamoDB_20120810.PutItem"
   else
      hit_marker = '"Item"'
   end
   wrk.headers["Content-Type"] = "application/x-amz-json-1.0"
   wrk.headers["X-Amz-Target"] = target
   wrk.headers["X-Amz-Date"] = "20261202T000000Z"
   wrk.headers["Authorization"] = "AWS4-HMAC-SHA256 "
      .. "Credential=bench/20261202/us-east-1/dynamodb/aws4_request, "
      .. "SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
      .. "Signature=" .. string.rep("0", 64)
   local value = make_value(100)
   for i = 0, key_count - 1 do
      local key = '{"pk":{"S":"' .. make_key(i) .. '"}'
      local body
      if mode == "put" then
         body = '{"TableName":"' .. table_name .. '","Item":' .. key
            .. ',"v":{"S":"' .. value .. '"}}}'
      else
         body = '{"TableName":"' .. table_name .. '","Key":' .. key .. "}}"
      end
      requests[i + 1] = wrk.format("POST", "/", nil, body)
   end
end

function request()
   return requests[math.random(key_count)]
end
