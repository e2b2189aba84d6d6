#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Serve the demo: trytond's WSGI application and its crons in one process

On SQLite, separate processes see each other's cache changes only by
polling the cache table, and trytond polls it through the connection of the
transaction that starts, which then commits each statement: a save refused
with an error would stay written. In one process the memory caches are
shared and nothing needs polling, so every transaction stays whole.

Usage: serve.py -c trytond.conf -d DATABASE [--logconf FILE]"""
import argparse
import datetime as dt
import logging
import threading

logger = logging.getLogger('demo')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('-c', '--config', dest='configfile', required=True)
    parser.add_argument('-d', '--database', dest='database', required=True)
    parser.add_argument('--logconf', dest='logconf')
    return parser.parse_args()


def run_crons(database, stop):
    "Run the due scheduled tasks at the start of each minute, as trytond-cron"
    from trytond.cron import run_cron
    while not stop.is_set():
        try:
            run_cron(database)
        except Exception:
            logger.exception("the scheduled tasks failed")
        now = dt.datetime.now()
        stop.wait(60 - (now.second + now.microsecond / 10**6))


def main():
    options = parse_args()
    import trytond.config as config
    config.update_etc(options.configfile)
    if options.logconf:
        import logging.config
        logging.config.fileConfig(options.logconf)
    else:
        logging.basicConfig(level=logging.WARNING)

    from werkzeug.serving import run_simple

    from trytond.pool import Pool
    from trytond.wsgi import app

    Pool.start()
    Pool(options.database).init()
    stop = threading.Event()
    threading.Thread(
        target=run_crons, args=(options.database, stop), daemon=True,
        name='crons').start()
    hostname, port = config.split_netloc(config.get('web', 'listen'))
    try:
        run_simple(hostname, port, app, threaded=True)
    finally:
        stop.set()


if __name__ == '__main__':
    main()
