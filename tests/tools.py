# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What the tests and the benchmarks share: a real SMTP server, the tracked
links of the emails, trytond's real WSGI application, a counter of SQL
statements, the logging of trytond processes and the processes themselves.

Nothing here is a mock: the emails travel over SMTP on the loopback and the
links are followed through the routes that trytond serves."""
import asyncio
import atexit
import collections
import contextlib
import datetime as dt
import email
import email.policy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
from unittest.mock import patch
from urllib.parse import urlsplit

from aiosmtpd.controller import Controller
from lxml import html as lxml_html
from sql import Literal
from sql.operators import Concat

import trytond.config as config
from trytond.pool import Pool
from trytond.pyson import PYSONEncoder
from trytond.tools import grouped_slice
from trytond.transaction import Transaction

__all__ = [
    'AUTOMATION_BASE', 'SMTPServer', 'start_smtp_server', 'configure',
    'restore_configuration', 'follow', 'links', 'html_part', 'text_part',
    'tracked', 'open_images', 'unsubscribe_links', 'DROP', 'smtp_server',
    'StatementCounter', 'create_parties', 'logging_config', 'start_process',
    'stop_process', 'run_process', 'free_port', 'AdminDatabases',
    'EXTRAS', 'activate_with_extras', 'create_user', 'TEMPLATE', 'BASE',
    'SETTINGS', 'email_activity', 'create_scenario', 'record_activities_of',
    'make_due', 'run_due']

AUTOMATION_BASE = 'http://example.com'
EMAIL_FROM = 'marketing@example.com'
# The routes tell people from link scanners by their User-Agent
BROWSER = (
    'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0')
# An answer of SMTPServer.answer_data: hang up instead of answering
DROP = object()
TRACE_WIDTH = int(os.environ.get('MA_TRACE_WIDTH', 160))


def free_port(hostname='127.0.0.1'):
    """Return a TCP port that nobody listens to on hostname, for a server
    that binds its port itself (trytond): another process may take it
    before, so a server of ours binds port 0 instead"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((hostname, 0))
        return sock.getsockname()[1]


class _Controller(Controller):
    "aiosmtpd's Controller listening on a socket bound beforehand"

    def __init__(self, handler, sock):
        hostname, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=hostname, port=port)
        self.socket = sock

    def _create_server(self):
        # The hook of aiosmtpd for where the server listens
        return self.loop.create_server(
            self._factory_invoker, sock=self.socket)


class _Handler:

    def __init__(self, server):
        self.server = server

    async def handle_RCPT(
            self, server, session, envelope, address, rcpt_options):
        answer = self.server.answer_rcpt(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        content = envelope.original_content or envelope.content
        answer = self.server.answer_data(
            envelope.mail_from, envelope.rcpt_tos, content)
        if answer is DROP:
            # Hang up before answering: the client cannot know
            server.transport.close()
            return '421 Closing'
        if answer:
            return answer
        self.server.receive(envelope.mail_from, envelope.rcpt_tos, content)
        return '250 Message accepted for delivery'


class SMTPServer:
    """An SMTP server on the loopback that keeps the messages it receives

    messages is the list of the received email.message.EmailMessage and
    envelopes the list of their (sender, recipients).

    Its port is bound from its creation, on port 0 unless port is given, so
    that no other process takes it: until start() the connections to it
    are refused, as to a server that is down. delay is the seconds it waits
    before answering a message. A subclass may refuse what it would accept
    by overriding answer_rcpt and answer_data, or keep other things than
    the messages by overriding receive; or answer otherwise with another
    handler_class."""
    handler_class = _Handler

    def __init__(self, hostname='127.0.0.1', port=None, delay=0):
        self.hostname = hostname
        self.delay = delay
        self.messages = []
        self.envelopes = []
        self._lock = threading.Lock()
        self._controller = None
        self._socket = self._bind(port or 0)
        self.port = self._socket.getsockname()[1]

    def _bind(self, port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.hostname, port))
        return sock

    @property
    def uri(self):
        return 'smtp://%s:%s' % (self.hostname, self.port)

    @property
    def running(self):
        return self._controller is not None

    def start(self):
        if self._controller is None:
            if self._socket is None:
                # Stopped: the server closed the socket
                self._socket = self._bind(self.port)
            controller = _Controller(self.handler_class(self), self._socket)
            self._socket = None
            controller.start()
            self._controller = controller
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def answer_rcpt(self, address):
        "Return the SMTP answer to refuse the recipient address"

    def answer_data(self, sender, recipients, content):
        "Return the SMTP answer, or DROP, to refuse the message"

    def receive(self, sender, recipients, content):
        "Keep the message that the server accepted"
        message = email.message_from_bytes(
            content, policy=email.policy.default)
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


@contextlib.contextmanager
def setting(section, option, value):
    "Set a configuration option for the duration of the block"
    added = not config.has_section(section)
    if added:
        config.add_section(section)
    old = config.get(section, option)
    config.set(section, option, value)
    try:
        yield
    finally:
        if old is not None:
            config.set(section, option, old)
        else:
            # trytond.config has no public remove_option
            config._config.remove_option(section, option)
            config._cache_clear()
        if added:
            config.remove_section(section)


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


def create_user(login, groups):
    "Create a user of login in the groups, each given by its XML id"
    pool = Pool()
    User = pool.get('res.user')
    ModelData = pool.get('ir.model.data')
    user, = User.create([{
                'login': login, 'name': login,
                'groups': [('add', [
                            ModelData.get_id(*g.split('.'))
                            for g in groups])],
                }])
    return user


# The scenario of the tests: an email to the parties coded prefix-*
TEMPLATE = (
    '<html xmlns:py="http://genshi.edgewall.org/"><body>'
    '<p>Dear ${record.name},</p>'
    '<p><a href="https://shop.example.com/offer">See the offer</a> '
    '<a href="https://shop.example.com/news?a=1&amp;b=2">News</a></p>'
    '<p><a href="unsubscribe">Unsubscribe</a> or '
    '<a href="unsubscribe|https://shop.example.com/bye">leave us</a></p>'
    '</body></html>')
BASE = 'https://track.example.com'
SETTINGS = {
    ('marketing', 'automation_base'): BASE,
    ('marketing', 'email_from'): 'news@example.com',
    }


def email_activity(**values):
    values.setdefault('name', "Welcome")
    values.setdefault('action', 'send_email')
    values.setdefault('email_from', 'shop@example.com')
    values.setdefault('email_title', "Hello ${record.name}")
    values.setdefault('email_template', TEMPLATE)
    return values


def create_scenario(prefix, activities, run=True, **values):
    "Create a scenario on the parties coded prefix-*"
    pool = Pool()
    Scenario = pool.get('marketing.automation.scenario')
    values.setdefault('name', prefix)
    values.setdefault('model', 'party.party')
    values.setdefault('domain', PYSONEncoder().encode(
            [('code', 'like', prefix + '-%')]))
    values['activities'] = [('create', activities)]
    scenario, = Scenario.create([values])
    if run:
        Scenario.run([scenario])
    return scenario


def record_activities_of(scenario, **domain):
    pool = Pool()
    RecordActivity = pool.get('marketing.automation.record.activity')
    clause = [('record.scenario', '=', scenario.id)]
    clause.extend((k, '=', v) for k, v in domain.items())
    return RecordActivity.search(clause, order=[('id', 'ASC')])


def make_due(record_activities):
    "Make the record activities due now, their delay over"
    pool = Pool()
    RecordActivity = pool.get('marketing.automation.record.activity')
    RecordActivity.write(list(record_activities), {
            'at': dt.datetime.now() - dt.timedelta(minutes=1),
            })


def run_due():
    "Execute every due record activity by batches, without delivering"
    pool = Pool()
    RecordActivity = pool.get('marketing.automation.record.activity')
    for record_activities in RecordActivity.due():
        RecordActivity.run(record_activities)


# The modules that the module test activates beside this one: the tests and
# scenarios that need any of them activate all, to share its cached database
EXTRAS = ['inbound_email', 'sale']


def activate_with_extras():
    "Activate the module with EXTRAS for a scenario and return its config"
    from proteus import config as proteus_config
    from trytond.tests.test_tryton import activate_module

    # Named as the module test names its database, which proteus'
    # activate_modules does not
    activate_module(['marketing_automation'] + EXTRAS)
    return proteus_config.set_trytond()


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


@contextlib.contextmanager
def smtp_server(server=None, **kwargs):
    """Run server, by default an SMTPServer, and send trytond's emails to it
    during the block"""
    uri = config.get('email', 'uri')
    with (server or SMTPServer(**kwargs)) as server:
        config.set('email', 'uri', server.uri)
        try:
            yield server
        finally:
            if uri is None:
                _remove_option('email', 'uri')
            else:
                config.set('email', 'uri', uri)


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
    """Follow the url of an email on trytond's WSGI application, as the
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
    "Return the open image URLs of message, by recipient or by activity"
    return [u for u in links(message) if _kind(u) in {'o', 'oa'}]


def unsubscribe_links(message):
    "Return the unsubscribe URLs of message"
    return [u for u in links(message) if _kind(u) == 'u']


class StatementCounter:
    """Count the SQL statements sent through the cursors of the current
    transaction's connection during the block; executemany counts one, as
    execute

    It patches the cursor class of the backend when it can (SQLiteCursor
    and psycopg's LoggingCursor are Python classes), so that it counts the
    statements of every connection until the end of the block. When the
    cursor type cannot be patched, it wraps the connection's cursor() to
    return counting proxies.

    statements keeps the text of each statement for summary(), unless keep
    is false: the benchmarks only count."""

    def __init__(self, keep=True):
        self.count = 0
        self.statements = []
        self.keep = keep
        self._stack = None

    def summary(self, limit=8):
        "Return the most repeated statements, to tell where the cost is"
        counts = collections.Counter(
            re.sub(r'\(.*', '', s)[:100] for s in self.statements)
        return '\n'.join(
            '%5d x %s' % (n, s) for s, n in counts.most_common(limit))

    def _record(self, query):
        self.count += 1
        if self.keep:
            self.statements.append(
                ' '.join(str(query).split())[:TRACE_WIDTH])

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        connection = Transaction().connection
        cursor = connection.cursor()
        Cursor = type(cursor)
        with contextlib.suppress(Exception):
            cursor.close()
        counter = self

        def wrap(name):
            original = getattr(Cursor, name)

            def method(cursor, query, *args, **kwargs):
                counter._record(query)
                return original(cursor, query, *args, **kwargs)
            return method
        try:
            for name in ('execute', 'executemany'):
                self._stack.enter_context(
                    patch.object(Cursor, name, wrap(name)))
        except (TypeError, AttributeError):
            self._stack.close()
            self._stack = contextlib.ExitStack()
            cursor_factory = connection.cursor

            def proxy_cursor(*args, **kwargs):
                return _CountingCursor(
                    cursor_factory(*args, **kwargs), counter)
            self._stack.enter_context(
                patch.object(connection, 'cursor', proxy_cursor))
        return self

    def __exit__(self, *exc_info):
        self._stack.close()
        return False


class _CountingCursor:
    "A proxy of a cursor that counts its statements"

    def __init__(self, cursor, counter):
        self._cursor = cursor
        self._counter = counter

    def execute(self, query, *args, **kwargs):
        self._counter._record(query)
        return self._cursor.execute(query, *args, **kwargs)

    def executemany(self, query, *args, **kwargs):
        self._counter._record(query)
        return self._cursor.executemany(query, *args, **kwargs)

    def __iter__(self):
        return iter(self._cursor)

    def __enter__(self):
        self._cursor.__enter__()
        return self

    def __exit__(self, *args):
        return self._cursor.__exit__(*args)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def clear_outbox():
    """Give up the unsent emails of an earlier test, so that a delivery
    sends only the test's own, and commit"""
    Email = Pool().get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.update(
            [table.marketing_automation_status], ['failed'],
            where=table.marketing_automation_status.in_(
                ['pending', 'sending'])))
    Transaction().commit()


def create_parties(prefix, count, email=True, start=0):
    """Create count parties coded prefix-NNNNNN with an email address
    each, by bulk inserts: the ORM would be too slow for thousands

    Return the ids of all the parties coded prefix-*."""
    pool = Pool()
    Party = pool.get('party.party')
    ContactMechanism = pool.get('party.contact_mechanism')
    party = Party.__table__()
    mechanism = ContactMechanism.__table__()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    now = dt.datetime.now()
    for sub_ids in grouped_slice(range(start, start + count), 500):
        rows = [['%s %s' % (prefix, i), '%s-%06d' % (prefix, i), True,
                transaction.user, now] for i in sub_ids]
        cursor.execute(*party.insert(
                [party.name, party.code, party.active,
                    party.create_uid, party.create_date],
                rows))
    if email:
        new = party.code.like(prefix + '-%') & (party.create_date == now)
        cursor.execute(*mechanism.insert(
                [mechanism.party, mechanism.type, mechanism.value,
                    mechanism.active, mechanism.sequence,
                    mechanism.create_uid, mechanism.create_date],
                party.select(
                    party.id, Literal('email'),
                    Concat(party.code, Literal('@example.com')),
                    Literal(True), Literal(10),
                    Literal(transaction.user), Literal(now),
                    where=new)))
    cursor.execute(*party.select(
            party.id, where=party.code.like(prefix + '-%'),
            order_by=[party.id.asc]))
    return [i for i, in cursor]


LOGGING = '''\
[loggers]
keys = root, werkzeug

[handlers]
keys = stderr

[formatters]
keys = simple

[logger_root]
level = WARNING
handlers = stderr

[logger_werkzeug]
level = WARNING
handlers =
qualname = werkzeug

[handler_stderr]
class = StreamHandler
args = (sys.stderr,)
formatter = simple

[formatter_simple]
format = %(asctime)s %(process)s %(levelname)s %(name)s %(message)s
'''


def logging_config(directory):
    """Write the logging configuration of the trytond processes in directory
    and return its path, for their --logconf

    Warnings and errors with their tracebacks go to stderr, without the
    log of each request."""
    path = os.path.join(directory, 'logging.conf')
    with open(path, 'w') as file:
        file.write(LOGGING)
    return path


def start_process(command, **kwargs):
    """Start command in a process group of its own, as subprocess.Popen
    does, for stop_process to end it with its children"""
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def stop_process(process, timeout=10):
    """Stop the process group of the process that start_process started:
    SIGTERM to the group, then SIGKILL to what is left of it once the
    process has ended or after timeout seconds

    Killing a process does not kill its children (the pool of
    trytond-worker): they would be left running without it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    else:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for stream in [process.stdin, process.stdout, process.stderr]:
        if stream:
            stream.close()


def run_process(command, timeout=None, **kwargs):
    """Run command to its end in a process group of its own, as
    subprocess.run does, and stop what is left of the group whatever
    happens"""
    process = start_process(command, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop_process(process)
    return subprocess.CompletedProcess(
        command, process.returncode, stdout, stderr)


class AdminDatabases:
    """Databases as trytond-admin --all makes them for a site, with the
    module activated and the password of admin "admin", for the tests that
    run trytond's own programs

    trytond-admin runs once per process, into a template, and each database
    is a copy of it: a file copy on SQLite, CREATE DATABASE ... TEMPLATE on
    PostgreSQL."""
    _template = None

    def __init__(self):
        raise TypeError("not to be instantiated")

    @staticmethod
    def uri():
        return os.environ.get('TRYTOND_DATABASE__URI') or 'sqlite://'

    @classmethod
    def backend(cls):
        return urlsplit(cls.uri()).scheme.split('+')[0] or 'sqlite'

    @staticmethod
    def environ(**values):
        "The environment of trytond's programs: only their config counts"
        environ = {k: v for k, v in os.environ.items()
            if not k.startswith('TRYTOND_')
            and k not in {'DB_NAME', 'DB_CACHE'}}
        environ.update(values)
        return environ

    @classmethod
    def _execute(cls, query):
        import psycopg
        with psycopg.connect(cls.uri().rstrip('/') + '/postgres',
                autocommit=True) as connection:
            connection.execute(query)

    @classmethod
    def _make_template(cls):
        directory = tempfile.mkdtemp(prefix='ma-admin-')
        name = 'ma_admin_tpl_%s' % os.getpid()
        password = os.path.join(directory, 'password')
        with open(password, 'w') as file:
            file.write('admin\n')
        conf = os.path.join(directory, 'trytond.conf')
        with open(conf, 'w') as file:
            file.write('[database]\nuri = %s\npath = %s\n' % (
                    cls.uri(), directory))
        if cls.backend() == 'postgresql':
            cls._execute('DROP DATABASE IF EXISTS "%s"' % name)
            cls._execute('CREATE DATABASE "%s"' % name)
            atexit.register(cls._drop, name)
        else:
            # trytond-admin creates the tables only in an existing file
            open(os.path.join(directory, name + '.sqlite'), 'w').close()
        atexit.register(shutil.rmtree, directory, True)
        process = run_process([
                os.path.join(os.path.dirname(sys.executable), 'trytond-admin'),
                '-c', conf, '-d', name, '--all',
                '-u', 'marketing_automation', '--activate-dependencies',
                '--email', 'admin@example.com'],
            env=cls.environ(TRYTONPASSFILE=password),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=600)
        if process.returncode:
            raise RuntimeError(
                'trytond-admin failed:\n' + process.stdout[-3000:])
        cls._template = directory, name

    @classmethod
    def create(cls, name, directory):
        """Create the database name, a copy of the template; on SQLite
        its file is in directory"""
        if cls._template is None:
            cls._make_template()
        template_directory, template = cls._template
        if cls.backend() == 'postgresql':
            cls._execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
            cls._execute(
                'CREATE DATABASE "%s" TEMPLATE "%s"' % (name, template))
        else:
            shutil.copyfile(
                os.path.join(template_directory, template + '.sqlite'),
                os.path.join(directory, name + '.sqlite'))
        return name

    @classmethod
    def drop(cls, name, directory):
        if cls.backend() == 'postgresql':
            cls._drop(name)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name + '.sqlite'))

    @classmethod
    def _drop(cls, name):
        with contextlib.suppress(Exception):
            cls._execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)


class DatabaseTestCase(unittest.TestCase):
    """A test case on a new database where the modules are activated, and
    the configuration has the settings, {(section, option): value}, during
    each test"""
    modules = ['marketing_automation']
    settings = {}

    @classmethod
    def setUpClass(cls):
        # Imported here: the benchmarks use these tools without it
        from trytond.tests.test_tryton import activate_module, drop_db
        super().setUpClass()
        drop_db()
        activate_module(cls.modules)

    def setUp(self):
        super().setUp()
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        for (section, option), value in self.settings.items():
            stack.enter_context(setting(section, option, value))

    @classmethod
    def tearDownClass(cls):
        from trytond.tests.test_tryton import drop_db
        super().tearDownClass()
        drop_db()
