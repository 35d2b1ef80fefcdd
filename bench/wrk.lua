-- wrk script of scripts/bench.sh: reads of random shards among the loaded set of one tier.
--
-- Environment (read by every wrk thread):
--   SG_TOKEN     bearer token (scope shards:read)
--   SG_PREFIX    account id prefix of the tier's data set (accounts are PREFIX%06d, shard s0)
--   SG_ACCOUNTS  number of loaded accounts
--   SG_MODE      "get" (default): GET /v1/accounts/{a}/shards/s0
--                "batch": POST /v1/shards:batchGet with SG_BATCH (default 10) random items
--                "put": PUT /v1/accounts/{a}/shards/put of SG_SHARD_BYTES (default 64) bytes
--                (a new version each time; 201 is success)
--
-- done() prints one line `SGJSON {...}`: requests, duration, errors, responses that were not
-- 200 (or a batch result carrying an error), latency percentiles in microseconds.

local token = os.getenv("SG_TOKEN") or error("SG_TOKEN is not set")
local prefix = os.getenv("SG_PREFIX") or error("SG_PREFIX is not set")
local accounts = tonumber(os.getenv("SG_ACCOUNTS") or "") or error("SG_ACCOUNTS is not set")
local mode = os.getenv("SG_MODE") or "get"
local batch = tonumber(os.getenv("SG_BATCH") or "10")
local shard_bytes = tonumber(os.getenv("SG_SHARD_BYTES") or "64")

-- Standard base64 of shard_bytes zero bytes.
local function zero_b64(n)
   local tail = ({ [0] = "", [1] = "AA==", [2] = "AAA=" })[n % 3]
   return string.rep("AAAA", math.floor(n / 3)) .. tail
end
local put_body = '{"shard":"' .. zero_b64(shard_bytes) .. '"}'

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   bad = 0
   math.randomseed(os.time() + 7919 * (thread_id or 0))
   wrk.headers["Authorization"] = "Bearer " .. token
   if mode == "batch" then
      wrk.method = "POST"
      wrk.path = "/v1/shards:batchGet"
      wrk.headers["Content-Type"] = "application/json"
   elseif mode == "put" then
      wrk.headers["Content-Type"] = "application/json"
   end
end

local function account()
   return string.format("%s%06d", prefix, math.random(0, accounts - 1))
end

function request()
   if mode == "batch" then
      local items = {}
      for i = 1, batch do
         items[i] = string.format('{"account":"%s","shard":"s0"}', account())
      end
      return wrk.format(nil, nil, nil, '{"items":[' .. table.concat(items, ",") .. ']}')
   end
   if mode == "put" then
      return wrk.format("PUT", "/v1/accounts/" .. account() .. "/shards/put", nil, put_body)
   end
   return wrk.format("GET", "/v1/accounts/" .. account() .. "/shards/s0")
end

function response(status, headers, body)
   if mode == "put" then
      if status ~= 201 then
         bad = bad + 1
      end
   elseif status ~= 200 then
      bad = bad + 1
   elseif mode == "batch" and string.find(body, '"error"', 1, true) then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local not_ok = 0
   for _, t in ipairs(threads) do
      not_ok = not_ok + (t:get("bad") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'SGJSON {"mode":"%s","requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
         .. '"not_ok":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
      mode, summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, not_ok,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
