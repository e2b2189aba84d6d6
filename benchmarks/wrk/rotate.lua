-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- A rotation over the paths of the file WRK_PATHS, one per line, as
-- browsers; each thread starts at its own place in the rotation
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
dofile(os.getenv("WRK_SCRIPTS") .. "/report.lua")

local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do
   if line ~= "" then
      paths[#paths + 1] = line
   end
end
local counter = 0
local thread_count = 0

function setup(thread)
   thread:set("offset", thread_count * 997)
   thread_count = thread_count + 1
end

function init(args)
   counter = offset or 0
end

function request()
   counter = counter + 1
   local path = paths[(counter % #paths) + 1]
   return wrk.format(nil, path)
end
