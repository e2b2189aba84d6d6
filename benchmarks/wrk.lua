-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- Every wrk run of run.py, as a browser: the JSON-RPC baseline when WRK_RPC
-- is set, a rotation over the paths of the file WRK_PATHS when it is set
-- (each thread from its own place, or each path once with WRK_ONCE),
-- otherwise the URL over and over
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
if os.getenv("WRK_RPC") then
   wrk.method = "POST"
   wrk.body = '{"method": "common.server.version", "params": []}'
   wrk.headers["Content-Type"] = "application/json"
end

-- WRK_ONCE: each path of WRK_PATHS once, the threads taking turns, and a
-- thread stops when its paths are done (what it sends after repeats its
-- last path)
local rotation = os.getenv("WRK_PATHS")
local once = os.getenv("WRK_ONCE")
local paths, counter, threads = {}, 0, {}
function setup(thread)
   threads[#threads + 1] = thread
   thread:set("offset", (#threads - 1) * 997)
   thread:set("index", #threads - 1)
   for _, each in ipairs(threads) do each:set("stride", #threads) end
end
if rotation then
   function init(args)
      counter = once and 0 or offset
      for line in io.lines(rotation) do
         if line ~= "" then paths[#paths + 1] = line end
      end
   end
   function request()
      if once then
         local next = index + counter * stride + 1
         if next > #paths then
            wrk.thread:stop()
            next = math.max(next - stride, 1)
         else
            counter = counter + 1
         end
         return wrk.format(nil, paths[next])
      end
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
