-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- One URL over and over, as a browser: a scanner's pattern
wrk.headers["User-Agent"] = os.getenv("WRK_USER_AGENT")
dofile(os.getenv("WRK_SCRIPTS") .. "/report.lua")
