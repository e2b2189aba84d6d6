# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""A real SMTP server on the loopback that counts what it receives

It runs in its own process, so that it shares no interpreter with what is
measured. The count is kept in an 8-byte file that the benchmark reads."""
import argparse
import os
import signal
import struct
import threading

from aiosmtpd.controller import Controller


class Handler:

    def __init__(self, path):
        self.count = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self.fd, struct.pack('<Q', 0), 0)

    async def handle_DATA(self, server, session, envelope):
        # The content is parsed by aiosmtpd already, it is not kept
        self.count += len(envelope.rcpt_tos) and 1
        os.pwrite(self.fd, struct.pack('<Q', self.count), 0)
        return '250 Message accepted for delivery'


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--count-file', required=True)
    options = parser.parse_args()
    controller = Controller(
        Handler(options.count_file), hostname='127.0.0.1',
        port=options.port)
    controller.start()
    print('ready', flush=True)
    stop = threading.Event()
    for signum in [signal.SIGINT, signal.SIGTERM]:
        signal.signal(signum, lambda *a: stop.set())
    try:
        while not stop.wait(1):
            pass
    finally:
        controller.stop()


if __name__ == '__main__':
    main()
