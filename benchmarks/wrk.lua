-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- Every wrk run of run.py, as a browser: the JSON-RPC baseline when WRK_RPC
-- is set, a rotation over the paths of the file WRK_PATHS when it is set
-- (each thread from its own place), otherwise the URL over and over
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
if os.getenv("WRK_RPC") then
   wrk.method = "POST"
   wrk.body = '{"method": "common.server.version", "params": []}'
   wrk.headers["Content-Type"] = "application/json"
end

local rotation = os.getenv("WRK_PATHS")
local paths, counter, threads = {}, 0, 0
function setup(thread)
   thread:set("offset", threads * 997)
   threads = threads + 1
end
if rotation then
   function init(args)
      counter = offset or 0
      for line in io.lines(rotation) do
         if line ~= "" then paths[#paths + 1] = line end
      end
   end
   function request()
      counter = counter + 1
      return wrk.format(nil, paths[(counter % #paths) + 1])
   end
end

-- The figures as one line of JSON for run.py; errors counts the connect,
-- read, write and timeout errors and the HTTP statuses of 400 and more
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format('@@wrk {"requests": %d, "rps": %.1f, ' ..
      '"p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "errors": %d, ' ..
      '"errors_detail": {"connect": %d, "read": %d, "write": %d, ' ..
      '"status": %d, "timeout": %d}}\n', summary.requests,
      summary.requests / summary.duration * 1e6, latency:percentile(50) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.connect + e.read + e.write + e.status + e.timeout,
      e.connect, e.read, e.write, e.status, e.timeout))
end
