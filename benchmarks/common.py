# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What the parts of the benchmark share: the e-mail template, the SQL
statement counter, the peak memory probe and the SMTP sink client"""
import json
import os
import resource
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, '.venv', 'bin')

USER_AGENT = (
    'Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0')
EMAIL_FROM = 'Bench <bench@example.com>'
AUTOMATION_BASE = 'http://example.com'

# The same template for the floor and for the module: a name, two links and
# an unsubscribe link
TITLE = 'News for ${record.name}'
TEMPLATE = '''\
<html xmlns:py="http://genshi.edgewall.org/">
<head><title>News</title></head>
<body>
<h1>Hello ${record.name},</h1>
<p>Our new season is here: see <a href="https://shop.example.com/new">the
new collection</a> or visit <a href="https://shop.example.com/stores">our
stores</a>.</p>
<p>Kind regards,<br/>The team</p>
<p><a href="unsubscribe">Unsubscribe</a></p>
</body>
</html>
'''
LINKS = ['https://shop.example.com/new', 'https://shop.example.com/stores']


def write_config(path, database_uri, database_path, smtp_port,
        web_listen=None):
    lines = [
        '[database]',
        'uri = %s' % database_uri,
        ]
    if database_path:
        lines.append('path = %s' % database_path)
    lines += [
        'language = en',
        '',
        '[email]',
        'uri = smtp://127.0.0.1:%s' % smtp_port,
        'from = %s' % EMAIL_FROM,
        '',
        '[marketing]',
        'automation_base = %s' % AUTOMATION_BASE,
        # Clicks are not taken for a scanner's just after sending
        'automation_click_delay = 0',
        ]
    if web_listen:
        lines += ['', '[web]', 'listen = %s' % web_listen]
    with open(path, 'w') as fp:
        fp.write('\n'.join(lines) + '\n')


class StatementCounter:
    """Count every statement executed on a cursor of trytond's backends

    It patches the cursor classes that trytond uses: SQLiteCursor for
    sqlite3 and the cursor factory of the psycopg 3 connections."""
    count = 0
    # Print each statement when BENCH_TRACE_SQL=all (=route: the first
    # requests through the routes only)
    trace = os.environ.get('BENCH_TRACE_SQL') == 'all'

    @classmethod
    def install(cls):
        from trytond.backend.sqlite import database as sqlite_database
        targets = [sqlite_database.SQLiteCursor]
        try:
            from trytond.backend.postgresql import database as pg_database
        except ImportError:
            pass
        else:
            targets.append(pg_database.LoggingCursor)
        for Cursor in targets:
            cls._patch(Cursor)

    @classmethod
    def _patch(cls, Cursor):
        if getattr(Cursor, '_bench_counted', False):
            return
        execute = Cursor.execute
        executemany = Cursor.executemany

        def counted_execute(self, *args, **kwargs):
            cls.count += 1
            if cls.trace:
                print('[sql] %s' % (args[0] if args else kwargs),
                    file=sys.stderr, flush=True)
            return execute(self, *args, **kwargs)

        def counted_executemany(self, query, params_seq, *args, **kwargs):
            params_seq = list(params_seq)
            cls.count += len(params_seq)
            return executemany(self, query, params_seq, *args, **kwargs)
        Cursor.execute = counted_execute
        Cursor.executemany = counted_executemany
        Cursor._bench_counted = True


class PeakMemory:
    """The peak resident memory of a step

    The high-water mark of the process is reset before the step when Linux
    allows it (/proc/self/clear_refs), otherwise it is the peak of the
    process so far."""

    def __init__(self):
        self.resettable = self._reset()

    @staticmethod
    def _reset():
        try:
            with open('/proc/self/clear_refs', 'w') as fp:
                fp.write('5')
            return True
        except OSError:
            return False

    def start(self):
        self.resettable = self._reset()

    @staticmethod
    def current_mb():
        try:
            with open('/proc/self/status') as fp:
                for line in fp:
                    if line.startswith('VmRSS:'):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    @staticmethod
    def peak_mb():
        try:
            with open('/proc/self/status') as fp:
                for line in fp:
                    if line.startswith('VmHWM:'):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SMTPCount:
    "Read the count of e-mails received by the sink (smtp_sink.py)"

    def __init__(self, path):
        self.path = path

    def __call__(self):
        try:
            with open(self.path, 'rb') as fp:
                data = fp.read(8)
        except FileNotFoundError:
            return 0
        if len(data) < 8:
            return 0
        return struct.unpack('<Q', data)[0]


class Step:
    "Measure wall time, statements, e-mails received and peak RSS"

    def __init__(self, name, smtp_count=None):
        self.name = name
        self.smtp_count = smtp_count
        self.memory = PeakMemory()

    def __enter__(self):
        self.memory.start()
        self.rss_start_mb = self.memory.current_mb()
        self.emails0 = self.smtp_count() if self.smtp_count else 0
        self.statements0 = StatementCounter.count
        self.load = os.getloadavg()[0]
        self.cpu0 = self._cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.cpu_seconds = self._cpu() - self.cpu0
        self.statements = StatementCounter.count - self.statements0
        if self.smtp_count:
            # The sink counts as the SMTP transaction ends
            self.emails = self.smtp_count() - self.emails0
        else:
            self.emails = 0
        self.peak_rss_mb = self.memory.peak_mb()
        return False

    @staticmethod
    def _cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def result(self, **extra):
        result = {
            'seconds': round(self.seconds, 4),
            'cpu_seconds': round(self.cpu_seconds, 4),
            'load_average': round(self.load, 2),
            'statements': self.statements,
            'emails': self.emails,
            'peak_rss_mb': round(self.peak_rss_mb, 1),
            'peak_rss_reset': self.memory.resettable,
            'rss_start_mb': (round(self.rss_start_mb, 1)
                if self.rss_start_mb is not None else None),
            }
        result.update(extra)
        return result


def emit(result):
    "Hand the result of a subprocess to run.py"
    print('@@result ' + json.dumps(result), flush=True)


def parse_result(output):
    for line in output.splitlines():
        if line.startswith('@@result '):
            return json.loads(line[len('@@result '):])
    return None
