-- This file is part of Tryton.  The COPYRIGHT file at the top level of
-- this repository contains the full copyright notices and license terms.
-- The baseline: trytond's common.server.version JSON-RPC call
wrk.method = "POST"
wrk.path = "/rpc/"
wrk.body = '{"method": "common.server.version", "params": []}'
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("WRK_SCRIPTS") .. "/report.lua")
