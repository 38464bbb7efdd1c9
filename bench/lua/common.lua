-- Shared by the dynakv and etcd wrk scripts: per-thread status counting and a
-- done() that prints one machine-readable line for bench/run.py:
--   @@BENCH_JSON@@ {"requests":..,"duration_us":..,"errors":{..},"status":{..},
--                   "latency_hist":[[us,count],..],"sample_error":"..","misses":..}
-- Loaded with dofile() from the workload scripts, in every Lua state wrk makes
-- (the main state runs setup/done, each thread state runs init/request/response).

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_index", thread_count)
   table.insert(threads, thread)
end

-- Per-thread state (lives in the thread's own Lua state).
status_counts = {}
sample_error = nil
misses = 0
hit_marker = nil -- set by a workload script: a body without it counts as a miss

function response(status, headers, body)
   local key = tostring(status)
   status_counts[key] = (status_counts[key] or 0) + 1
   if status < 200 or status > 299 then
      if sample_error == nil then
         sample_error = key .. " " .. string.sub(body or "", 1, 300)
      end
   elseif hit_marker ~= nil and not string.find(body or "", hit_marker, 1, true) then
      misses = misses + 1
      if sample_error == nil then
         sample_error = "miss " .. key .. " " .. string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local status = {}
   local total_misses = 0
   local sample = nil
   for _, thread in ipairs(threads) do
      local counts = thread:get("status_counts") or {}
      for code, n in pairs(counts) do
         status[code] = (status[code] or 0) + n
      end
      total_misses = total_misses + (thread:get("misses") or 0)
      if sample == nil then
         sample = thread:get("sample_error")
      end
   end
   local parts = {}
   for code, n in pairs(status) do
      table.insert(parts, string.format('"%s":%d', code, n))
   end
   local hist = {}
   for i = 1, #latency do
      local value, count = latency(i)
      table.insert(hist, string.format("[%d,%d]", value, count))
   end
   local e = summary.errors
   io.write("@@BENCH_JSON@@ {")
   io.write(string.format('"requests":%d,"duration_us":%d,"bytes":%d,',
      summary.requests, summary.duration, summary.bytes))
   io.write(string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},',
      e.connect, e.read, e.write, e.status, e.timeout))
   io.write('"status":{' .. table.concat(parts, ",") .. "},")
   io.write(string.format('"misses":%d,', total_misses))
   io.write('"sample_error":' .. (sample and json_string(sample) or "null") .. ",")
   io.write('"latency_hist":[' .. table.concat(hist, ",") .. "]}\n")
end

-- Keys: ASCII "key%08d" (no percent-encoding needed; see bench/README.md).
function make_key(index)
   return string.format("key%08d", index)
end

-- A deterministic 100-byte value; printable so it survives any logging.
function make_value(size)
   local chunk = "0123456789abcdefghijklmnopqrstuvwxyz"
   local out = {}
   local length = 0
   while length < size do
      table.insert(out, chunk)
      length = length + #chunk
   end
   return string.sub(table.concat(out), 1, size)
end
