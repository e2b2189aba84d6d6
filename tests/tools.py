# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Helpers for the scenarios: a real SMTP server, the tracked links of the
e-mails and trytond's real WSGI application.

Nothing here is a mock: the e-mails travel over SMTP on the loopback and the
links are followed through the routes that trytond serves."""
import email
import email.policy
import socket
import threading
from urllib.parse import urlsplit

from aiosmtpd.controller import Controller
from lxml import html as lxml_html

import trytond.config as config

__all__ = [
    'AUTOMATION_BASE', 'SMTPServer', 'start_smtp_server', 'configure',
    'restore_configuration', 'follow', 'links', 'html_part', 'text_part',
    'tracked', 'open_images', 'unsubscribe_links']

AUTOMATION_BASE = 'http://example.com'
EMAIL_FROM = 'marketing@example.com'
# The routes tell people from link scanners by their User-Agent
BROWSER = (
    'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0')


def free_port(hostname='127.0.0.1'):
    "Return a TCP port that nobody listens to on hostname"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((hostname, 0))
        return sock.getsockname()[1]


class _Handler:

    def __init__(self, server):
        self.server = server

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(
            envelope.original_content or envelope.content,
            policy=email.policy.default)
        self.server._receive(envelope.mail_from, envelope.rcpt_tos, message)
        return '250 Message accepted for delivery'


class SMTPServer:
    """An SMTP server on the loopback that keeps the messages it receives

    messages is the list of the received e-mail.message.EmailMessage and
    envelopes the list of their (sender, recipients)."""

    def __init__(self, hostname='127.0.0.1', port=None):
        self.hostname = hostname
        self.port = port or free_port(hostname)
        self.messages = []
        self.envelopes = []
        self._lock = threading.Lock()
        self._controller = None

    @property
    def uri(self):
        return 'smtp://%s:%s' % (self.hostname, self.port)

    @property
    def running(self):
        return self._controller is not None

    def start(self):
        if self._controller is None:
            controller = Controller(
                _Handler(self), hostname=self.hostname, port=self.port)
            controller.start()
            self._controller = controller
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _receive(self, sender, recipients, message):
        with self._lock:
            self.messages.append(message)
            self.envelopes.append((sender, list(recipients)))

    def pop(self):
        "Return the messages received so far and forget them"
        with self._lock:
            messages = self.messages
            self.messages, self.envelopes = [], []
        return messages

    def __enter__(self):
        return self.start()

    def __exit__(self, *args):
        self.stop()


_saved = {}


def _remove_option(section, option):
    config._config.remove_option(section, option)
    config._cache_clear()


def _save(section, option):
    key = (section, option)
    if key not in _saved:
        if config.has_section(section):
            _saved[key] = config.get(section, option)
        else:
            _saved[key] = None


def configure(
        server, email_from=EMAIL_FROM, automation_base=AUTOMATION_BASE,
        click_delay=0):
    """Point trytond at the SMTP server and the tracked links at
    automation_base

    A click that comes less than click_delay seconds after the sending is
    taken for a mail scanner's; the scenarios click at once."""
    if not config.has_section('marketing'):
        config.add_section('marketing')
    for section, option, value in [
            ('email', 'uri', server.uri),
            ('email', 'from', email_from),
            ('marketing', 'automation_base', automation_base),
            ('marketing', 'automation_click_delay', str(click_delay)),
            ]:
        _save(section, option)
        config.set(section, option, value)


def start_smtp_server(**kwargs):
    "Start an SMTP server and configure trytond to send to it"
    server = SMTPServer().start()
    configure(server, **kwargs)
    return server


def restore_configuration():
    "Put back the configuration that configure changed"
    for (section, option), value in _saved.items():
        if value is None:
            _remove_option(section, option)
        else:
            config.set(section, option, value)
    _saved.clear()


def _client():
    from werkzeug.test import Client

    from trytond.wsgi import app
    return Client(app)


def path(url):
    "Return the path of the tracked url on trytond"
    base = config.get('marketing', 'automation_base') or ''
    base = base.rstrip('/')
    if base and url.startswith(base + '/'):
        return url[len(base):]
    parts = urlsplit(url)
    return parts.path + ('?' + parts.query if parts.query else '')


def follow(url, data=None, method=None, user_agent=BROWSER, headers=None):
    """Follow the url of an e-mail on trytond's WSGI application, as the
    browser of user_agent does

    It is a GET, or a POST of the form data when data is given.
    It returns the werkzeug response: status_code, headers (Location),
    mimetype and data."""
    client = _client()
    if method is None:
        method = 'POST' if data is not None else 'GET'
    headers = dict(headers or {})
    if user_agent:
        headers.setdefault('User-Agent', user_agent)
    return client.open(
        path(url), method=method, data=data, headers=headers)


def html_part(message):
    "Return the HTML content of the message"
    return message.get_body(preferencelist=('html',)).get_content()


def text_part(message):
    "Return the plain-text content of the message with newlines"
    content = message.get_body(preferencelist=('plain',)).get_content()
    return content.replace('\r\n', '\n')


def links(message):
    "Return every a/@href and img/@src of the HTML part of message"
    document = lxml_html.document_fromstring(html_part(message))
    return [str(u) for u in document.xpath('//a/@href | //img/@src')]


def _kind(url):
    parts = path(url).split('/')
    # /m/<database>/<kind>/...
    if len(parts) > 3 and parts[1] == 'm':
        return parts[3]


def tracked(message):
    "Return the click URLs of message"
    return [u for u in links(message) if _kind(u) == 'c']


def open_images(message):
    "Return the open image URLs of message"
    return [u for u in links(message) if _kind(u) == 'o']


def unsubscribe_links(message):
    "Return the unsubscribe URLs of message"
    return [u for u in links(message) if _kind(u) == 'u']
