-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- Print the figures of the run as one line of JSON for run.py
function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      '@@wrk {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"connect": %d, "read": %d, "write": %d, "status": %d, ' ..
      '"timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
      '"max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status,
      errors.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end
