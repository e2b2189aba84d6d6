#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""A local SMTP server for the demo.

It accepts every email, saves it as an .eml file and prints its subject,
its recipients and the links found in its HTML part: the tracked links
(every <a href>) and the open-tracking image (every <img src>), so that they
can be followed in a browser or with curl.
"""
import argparse
import datetime as dt
import email
import itertools
import os
import re
import signal
import sys
import threading
from email import policy
from html.parser import HTMLParser

from aiosmtpd.controller import Controller

_counter = itertools.count(1)
_lock = threading.Lock()


class LinkParser(HTMLParser):
    "Collect the links and images of an HTML document"

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links = []
        self.images = []
        self._href = None
        self._text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'a' and attrs.get('href'):
            self._href = attrs['href']
            self._text = []
        elif tag == 'img' and attrs.get('src'):
            self.images.append(attrs['src'])

    def handle_data(self, data):
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == 'a' and self._href is not None:
            text = ' '.join(''.join(self._text).split())
            self.links.append((text, self._href))
            self._href = None


def parse_links(html):
    parser = LinkParser()
    parser.feed(html)
    parser.close()
    return parser.links, parser.images


def _filename(message):
    now = dt.datetime.now()
    subject = re.sub(r'[^A-Za-z0-9_-]+', '-', str(message['Subject'] or ''))
    subject = subject.strip('-')[:40] or 'no-subject'
    with _lock:
        number = next(_counter)
    return '%s-%03d-%s.eml' % (
        now.strftime('%Y%m%d-%H%M%S'), number, subject)


class Handler:

    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        try:
            self.save(envelope)
        except Exception as exception:
            print(
                '[smtp] could not handle an email: %r' % exception,
                file=sys.stderr, flush=True)
        return '250 Message accepted for delivery'

    def save(self, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode('utf-8')
        message = email.message_from_bytes(content, policy=policy.default)
        path = os.path.join(self.directory, _filename(message))
        with open(path, 'wb') as fp:
            fp.write(content)

        lines = [
            '',
            '[smtp] New email: %s' % message['Subject'],
            '[smtp]   From: %s' % message['From'],
            '[smtp]   To:   %s' % (
                message['To'] or ', '.join(envelope.rcpt_tos)),
            '[smtp]   Saved as %s' % path,
            ]
        body = message.get_body(preferencelist=('html',))
        if body is not None:
            links, images = parse_links(body.get_content())
            for text, href in links:
                lines.append('[smtp]   Link %r: %s' % (text, href))
            for src in images:
                lines.append('[smtp]   Open image: %s' % src)
        else:
            lines.append('[smtp]   (no HTML part)')
        print('\n'.join(lines), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='localhost')
    parser.add_argument('--port', type=int, default=8025)
    parser.add_argument(
        '--directory', default='mail',
        help="where to save the received emails")
    options = parser.parse_args(argv)

    os.makedirs(options.directory, exist_ok=True)
    controller = Controller(
        Handler(options.directory),
        hostname=options.host, port=options.port)
    controller.start()
    print('[smtp] Listening on %s:%s, saving emails in %s' % (
            options.host, options.port, options.directory), flush=True)

    stop = threading.Event()

    def handler(signum, frame):
        stop.set()
    for signum in [signal.SIGINT, signal.SIGTERM]:
        signal.signal(signum, handler)
    try:
        while not stop.wait(1):
            pass
    finally:
        controller.stop()


if __name__ == '__main__':
    main()
