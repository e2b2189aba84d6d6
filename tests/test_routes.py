# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Hostile input on the routes and event storms on a running server

The fuzz fires generated requests at trytond's real WSGI application, on a
database where emails were really sent, so valid tokens exist. It checks
that no request is answered 5xx and that no request changes the state of
the records.

The storm starts a real trytond server on the loopback and fires opens and
clicks of the same email at once from threads."""
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import unittest.mock
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from werkzeug.exceptions import HTTPException
from werkzeug.test import EnvironBuilder, run_wsgi_app

import trytond.config as config
from trytond.modules.marketing_automation.tests.tools import (
    BROWSER, TEMPLATE, AdminDatabases, DatabaseTestCase, StatementCounter,
    follow, free_port, open_images, restore_configuration, start_process,
    start_smtp_server, stop_process, tracked, unsubscribe_links)
from trytond.pool import Pool
from trytond.pyson import PYSONEncoder
from trytond.tests.test_tryton import DB_NAME
from trytond.transaction import Transaction

MODULE = 'marketing_automation'
BASE = 'http://track.example.com'
# Apple Mail Privacy Protection, a machine open of scanner.py
MACHINE = 'Mozilla/5.0'
SCANNER = 'Mozilla/5.0 (compatible; Barracuda Sentinel)'
METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH']
# The routed methods are drawn more often
WEIGHTED_METHODS = ['GET'] * 5 + ['HEAD'] * 2 + ['POST'] * 3 + METHODS
# Requests per example and examples: more than 10,000 requests in all
BATCH = 25
EXAMPLES = int(os.environ.get('MA_FUZZ_EXAMPLES', 420))
STORM = 1000
STORM_WORKERS = 48


def report(line):
    print('[marketing_automation] ' + line, file=sys.stderr, flush=True)


def snapshot(database_name=DB_NAME):
    """Return the counts and a hash of the rows that the routes may change

    The rows are read in a new transaction: what the routes committed."""
    tables = [
        'marketing_automation_record',
        'marketing_automation_record_activity',
        'ir_email',
        'party_party-unsubscribed-marketing_automation_scenario',
        ]
    result = {}
    with Transaction().start(database_name, 0, readonly=True) as transaction:
        cursor = transaction.connection.cursor()
        for table in tables:
            cursor.execute('SELECT * FROM "%s" ORDER BY id' % table)
            rows = cursor.fetchall()
            digest = hashlib.sha256(repr(rows).encode('utf-8')).hexdigest()
            result[table] = (len(rows), digest)
    return result


def _path_only(url):
    parts = urlsplit(url)
    return parts.path


# Hostile values ------------------------------------------------------------

HEX = '0123456789abcdef'
NASTY = [
    '', '.', '..', '...', '%', '%0', '%zz', '%00', '%%', '%2', '%g0',
    '\x00', 'a\x00b', '%2F', '%2f..', '%2e%2e', '%252e', '%u0000', '%C0%AF',
    '%FF', '%FE%FF', '%E2%80%AE', '%ED%A0%80', '..%2F..%2Fetc%2Fpasswd',
    '/etc/passwd', ';', ';jsessionid=1', '\\', '%5C', '*', '~', 'null',
    'None', 'undefined', 'NaN', '-1', '0', '1e309', "'", '"',
    "' OR '1'='1", "1;DROP TABLE ir_email;--", '<script>alert(1)</script>',
    '${7*7}', '{{7*7}}', '\u202e', '\ufeff', '\u0130', 'é', '\U0001f600',
    ' ', '\t', '+', '&', '=', '?', '#', '.gif', 'x.gif', '%2Egif',
    ]
LONG_UNITS = ['a', '0', 'f', '%', '%00', '%zz', 'é', '\x00', '/', '.', '%2F']


def long_values():
    return st.builds(
        lambda unit, size: (unit * size)[:size],
        st.sampled_from(LONG_UNITS), st.integers(10_000, 16_000))


def segments():
    "One segment of a path: short, long, unicode, NUL, bad percent-encoding"
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=40),
        st.text(HEX, max_size=40),
        st.text(HEX + HEX.upper(), min_size=16, max_size=32),
        st.binary(max_size=24).map(lambda b: quote(b, safe='')),
        st.lists(st.sampled_from(NASTY), min_size=2, max_size=5).map(''.join),
        long_values(),
        )


def mutate(value, operation, position, extra):
    "Return value slightly changed by operation"
    position %= max(len(value), 1)
    if operation == 'upper':
        return value.upper()
    elif operation == 'insert':
        return value[:position] + extra + value[position:]
    elif operation == 'delete':
        return value[:position] + value[position + 1:]
    elif operation == 'replace':
        return value[:position] + (extra or 'g') + value[position + 1:]
    elif operation == 'append':
        return value + extra
    elif operation == 'prepend':
        return extra + value
    elif operation == 'truncate':
        return value[:position]
    elif operation == 'double':
        return value * 2
    elif operation == 'percent':
        # Decodes back to the value itself
        return ''.join('%%%02X' % ord(c) for c in value)
    elif operation == 'half-percent':
        return value[:position] + ''.join(
            '%%%02x' % ord(c) for c in value[position:])
    elif operation == 'nul':
        return value + '%00'
    elif operation == 'slash':
        return value + '/'
    return value


OPERATIONS = [
    'upper', 'insert', 'delete', 'replace', 'append', 'prepend', 'truncate',
    'double', 'percent', 'half-percent', 'nul', 'slash', 'same']


def mutations(values):
    return st.builds(
        mutate, st.sampled_from(values), st.sampled_from(OPERATIONS),
        st.integers(0, 64), st.one_of(st.sampled_from(NASTY), st.text(
                max_size=3)))


def tokens(valid, size):
    return st.one_of(
        st.sampled_from(valid),
        st.text(HEX, min_size=size, max_size=size),
        mutations(valid),
        segments(),
        )


def queries():
    return st.one_of(
        st.none(),
        st.just(''),
        st.sampled_from([
                'List-Unsubscribe=One-Click', 'unsubscribe=1',
                'url=https://evil.example.com', 'next=//evil.example.com',
                'a=%zz', 'a=%', 'a=%0', 'a=%00', '&&&', '=', 'a[]=1&a[]=2',
                ]),
        st.lists(st.tuples(segments(), segments()), max_size=4).map(
            lambda pairs: '&'.join('%s=%s' % p for p in pairs)),
        long_values(),
        )


HEADER_NAMES = [
    'User-Agent', 'User-Agent', 'User-Agent', 'Purpose', 'Sec-Purpose',
    'X-Purpose', 'X-Moz', 'Content-Type', 'Accept', 'Accept-Language',
    'Accept-Encoding', 'Referer', 'X-Forwarded-For', 'Range',
    'If-None-Match', 'If-Modified-Since', 'Content-Encoding', 'Cookie',
    'X-Requested-With', 'Forwarded', 'Cache-Control', 'Sec-Fetch-Dest',
    ]
# A valid Basic authorization makes trytond try a login: the test of the
# credentials checks it apart, as each failed login sleeps longer
AUTHORIZATIONS = [
    'Digest username="a"', 'Bearer x', 'Session abc', 'Session YTpiOmM=',
    'Basic %%%', 'Negotiate x', 'Basic', 'Session',
    ]
HEADER_VALUES = [
    BROWSER, MACHINE, SCANNER, 'curl/8.0', '', ' ', 'prefetch', 'preview',
    'prerender', 'Prefetch;prerender', 'application/x-www-form-urlencoded',
    'multipart/form-data', 'multipart/form-data; boundary=x',
    'multipart/form-data; boundary=', 'application/json', 'text/xml',
    'application/json-rpc', 'text/plain; charset=bogus',
    'application/x-www-form-urlencoded; charset=utf-16', 'gzip', 'deflate',
    'br', 'bytes=0-0', 'bytes=-1', 'bytes=5-1', '*/*', 'image/*;q=0.9',
    'text/html;q=abc', '', '1.2.3.4, ::1, unknown', 'for=unknown',
    ]


def latin1(value):
    "The value as a WSGI server hands it: latin-1, on one line"
    value = value.encode('utf-8').decode('latin-1')
    return value.replace('\r', ' ').replace('\n', ' ')


def headers():
    return st.lists(st.one_of(
            st.tuples(
                st.sampled_from(HEADER_NAMES),
                st.one_of(
                    st.sampled_from(HEADER_VALUES), segments(),
                    st.text(max_size=60)).map(latin1)),
            st.tuples(
                st.just('Authorization'),
                st.one_of(st.sampled_from(AUTHORIZATIONS), segments()).map(
                    latin1))),
        max_size=6)


def bodies():
    return st.one_of(
        st.just(b''),
        st.sampled_from([
                b'List-Unsubscribe=One-Click', b'unsubscribe=1',
                b'List-Unsubscribe=One-Click&List-Unsubscribe=x',
                b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n',
                b'--x--', b'{"method": "common.db.list", "params": []}',
                b'<?xml version="1.0"?><methodCall/>', b'%zz=%', b'\x00' * 64,
                b'\x1f\x8b\x08\x00garbage',
                ]),
        st.binary(max_size=200),
        st.text(max_size=100).map(lambda t: t.encode('utf-8')),
        long_values().map(lambda t: t.encode('utf-8')),
        )


def environ(method, target, header_list, body):
    """Return the WSGI environ of the request line method target with the
    headers and body, as werkzeug's server builds it"""
    raw = target.encode('utf-8').decode('latin-1')
    parts = urlsplit(raw)
    if not parts.scheme and parts.netloc:
        path = '/%s%s' % (parts.netloc, parts.path)
    else:
        path = parts.path
    builder = EnvironBuilder(
        path='/', method=method, data=body or None,
        headers=[(k, v) for k, v in header_list if k != 'Content-Type'],
        content_type=dict(header_list).get('Content-Type'))
    try:
        env = builder.get_environ()
    finally:
        builder.close()
    env.update({
            'PATH_INFO': unquote(path).encode('utf-8').decode('latin-1'),
            'QUERY_STRING': parts.query.encode('utf-8').decode('latin-1'),
            'REQUEST_URI': raw,
            'RAW_URI': raw,
            'REMOTE_ADDR': '127.0.0.1',
            })
    return env


def call(env):
    "Return the status code of the application for env, 500 if it raises"
    from trytond.wsgi import app
    try:
        app_iter, status, _ = run_wsgi_app(app, env, buffered=True)
        if hasattr(app_iter, 'close'):
            app_iter.close()
        return int(status.split()[0])
    except HTTPException as exception:
        # Raised out of the application: a server answers 500
        return 500 if exception.code is None else 500
    except Exception:
        return 500


class RoutesFuzzTestCase(DatabaseTestCase):
    "Hostile input on the routes of marketing_automation"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.smtp = start_smtp_server(automation_base=BASE, click_delay=0)
        try:
            cls.messages = cls.send()
        except Exception:
            cls.smtp.stop()
            restore_configuration()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.smtp.stop()
        restore_configuration()
        super().tearDownClass()

    @classmethod
    def send(cls):
        """Send the email of a scenario to five parties and return their
        messages by party code"""
        with Transaction().start(DB_NAME, 0) as transaction:
            pool = Pool()
            Party = pool.get('party.party')
            Scenario = pool.get('marketing.automation.scenario')
            RecordActivity = pool.get('marketing.automation.record.activity')
            Party.create([{
                        'name': 'Fuzz %s' % code,
                        'code': 'FZ-%s' % code,
                        'contact_mechanisms': [('create', [{
                                        'type': 'email',
                                        'value': '%s@example.com' % code,
                                        }])],
                        } for code in 'ABCDEFGH'])
            scenario, = Scenario.create([{
                        'name': "Fuzz",
                        'model': 'party.party',
                        'domain': PYSONEncoder().encode(
                            [('code', 'like', 'FZ-%')]),
                        'unsubscribable': True,
                        'activities': [('create', [{
                                        'name': "Welcome",
                                        'action': 'send_email',
                                        'email_from': 'shop@example.com',
                                        'email_title': "Hello ${record.name}",
                                        'email_template': TEMPLATE,
                                        'children': [('create', [{
                                                        'name': "Opened",
                                                        'on': 'email_opened',
                                                        'delay': dt.timedelta(
                                                            days=1),
                                                        }, {
                                                        'name': "Not opened",
                                                        'on':
                                                        'email_opened_not',
                                                        'delay': dt.timedelta(
                                                            days=2),
                                                        }, {
                                                        'name': "Clicked",
                                                        'on': 'email_clicked',
                                                        'delay': dt.timedelta(
                                                            days=1),
                                                        }])],
                                        }])],
                        }])
            Scenario.run([scenario])
            Scenario.trigger([scenario])
            transaction.commit()
            RecordActivity.process()
            transaction.commit()
        messages = {}
        for message in cls.smtp.pop():
            code = message['To'].addresses[0].username.upper()
            messages[code] = message
        assert sorted(messages) == list('ABCDEFGH'), sorted(messages)
        return messages

    def urls(self, code):
        message = self.messages[code]
        unsubscribe = sorted(unsubscribe_links(message), key=len)
        return {
            'open': open_images(message)[0],
            'clicks': tracked(message),
            'unsubscribe': unsubscribe[0],
            'unsubscribe_target': unsubscribe[1],
            }

    @staticmethod
    def record_activities(code):
        "Return the state of the record activities of the party code"
        with Transaction().start(DB_NAME, 0, readonly=True):
            pool = Pool()
            RecordActivity = pool.get('marketing.automation.record.activity')
            return {ra.activity.name: {
                    'state': ra.state,
                    'at': ra.at,
                    'opened': ra.email_opened,
                    'clicked': ra.email_clicked,
                    'machine': ra.email_opened_machine,
                    'filtered': ra.email_filtered,
                    'blocked': ra.record.blocked,
                    } for ra in RecordActivity.search([
                        ('record.record.code', '=', 'FZ-%s' % code,
                            'party.party'),
                        ])}

    def test_valid_requests(self):
        "The valid requests of an email do their work, once"
        urls = self.urls('E')
        before = self.record_activities('E')
        self.assertFalse(before['Welcome']['opened'])
        self.assertEqual(before['Opened']['at'], None)
        self.assertEqual(before['Not opened']['state'], 'waiting')

        # A scanner and a prefetch move nothing
        for kwargs in [
                {'user_agent': SCANNER}, {'user_agent': None},
                {'method': 'HEAD'},
                {'headers': {'Purpose': 'prefetch'}}]:
            self.assertEqual(follow(urls['open'], **kwargs).status_code, 200)
            self.assertEqual(
                follow(urls['clicks'][0], **kwargs).status_code, 302)
        after = self.record_activities('E')
        self.assertFalse(after['Welcome']['opened'])
        self.assertFalse(after['Welcome']['clicked'])
        self.assertTrue(after['Welcome']['filtered'])
        self.assertEqual(after['Opened']['at'], None)

        # A machine open counts apart
        self.assertEqual(
            follow(urls['open'], user_agent=MACHINE).status_code, 200)
        after = self.record_activities('E')
        self.assertTrue(after['Welcome']['machine'])
        self.assertFalse(after['Welcome']['opened'])

        # The person opens
        response = follow(urls['open'])
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.mimetype, 'image/gif')
        after = self.record_activities('E')
        self.assertTrue(after['Welcome']['opened'])
        self.assertIsNotNone(after['Opened']['at'])
        self.assertEqual(after['Not opened']['state'], 'cancelled')
        opened_at = after['Opened']['at']
        self.assertEqual(follow(urls['open']).status_code, 200)
        self.assertEqual(self.record_activities('E'), after)

        # The person clicks each link, counted once
        for url, target in zip(urls['clicks'], [
                    'https://shop.example.com/offer',
                    'https://shop.example.com/news?a=1&b=2']):
            response = follow(url)
            self.assertEqual(response.status_code, 302)
            self.assertEqual(response.headers['Location'], target)
        after = self.record_activities('E')
        self.assertTrue(after['Welcome']['clicked'])
        self.assertIsNotNone(after['Clicked']['at'])
        self.assertEqual(after['Opened']['at'], opened_at)
        self.assertEqual(follow(urls['clicks'][0]).status_code, 302)
        self.assertEqual(self.record_activities('E'), after)

        # Unsubscribe: a GET only asks, a POST blocks
        response = follow(urls['unsubscribe'])
        self.assertEqual(response.status_code, 200)
        self.assertIn(b'<form method="post">', response.data)
        self.assertFalse(self.record_activities('E')['Welcome']['blocked'])
        response = follow(urls['unsubscribe_target'], data={
                'unsubscribe': '1'})
        self.assertEqual(response.status_code, 303)
        self.assertEqual(
            response.headers['Location'], 'https://shop.example.com/bye')
        after = self.record_activities('E')
        self.assertTrue(after['Welcome']['blocked'])
        self.assertEqual(after['Opened']['state'], 'cancelled')
        response = follow(urls['unsubscribe'], data={
                'List-Unsubscribe': 'One-Click'})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(self.record_activities('E'), after)

    def test_machine_open_then_click(self):
        "An early click and a machine open fire nothing, a later click does"
        urls = self.urls('F')
        config.set('marketing', 'automation_click_delay', '3600')
        try:
            response = follow(urls['clicks'][0])
        finally:
            config.set('marketing', 'automation_click_delay', '0')
        self.assertEqual(response.status_code, 302)
        after = self.record_activities('F')
        self.assertFalse(after['Welcome']['clicked'])
        self.assertTrue(after['Welcome']['filtered'])
        self.assertEqual(after['Clicked']['at'], None)

        self.assertEqual(
            follow(urls['open'], user_agent=MACHINE).status_code, 200)
        after = self.record_activities('F')
        self.assertTrue(after['Welcome']['machine'])
        self.assertFalse(after['Welcome']['opened'])
        self.assertEqual(after['Opened']['at'], None)
        self.assertEqual(after['Not opened']['state'], 'waiting')
        # It shows apart in the statistics of the activity
        with Transaction().start(DB_NAME, 0, readonly=True):
            Activity = Pool().get('marketing.automation.activity')
            welcome, = Activity.search([('name', '=', "Welcome")])
            self.assertGreaterEqual(welcome.email_opened_machine, 1)
            self.assertLess(welcome.email_opened, welcome.record_count)

        self.assertEqual(follow(urls['clicks'][0]).status_code, 302)
        after = self.record_activities('F')
        self.assertTrue(after['Welcome']['clicked'])
        self.assertTrue(after['Welcome']['opened'])
        self.assertIsNotNone(after['Clicked']['at'])
        self.assertIsNotNone(after['Opened']['at'])
        self.assertEqual(after['Not opened']['state'], 'cancelled')

    def test_repeat_is_read(self):
        "A repeat open or click reads, in a read-only transaction or none"
        from trytond.modules.marketing_automation import routes
        urls = self.urls('G')
        # The first events write
        with self.requests() as (transactions, counter):
            self.assertEqual(follow(urls['open']).status_code, 200)
            self.assertEqual(follow(urls['clicks'][0]).status_code, 302)
        self.assertIn(False, transactions)
        self.assertTrue(self.writes(counter))
        after = self.record_activities('G')
        self.assertTrue(after['Welcome']['clicked'])

        # A process that does not remember them reads them again
        routes._remembered.clear()
        with self.requests() as (transactions, counter):
            self.assertEqual(follow(urls['open']).status_code, 200)
            self.assertEqual(follow(urls['clicks'][0]).status_code, 302)
        self.assertEqual(transactions, [True])
        self.assertEqual(self.writes(counter), [])

        # The one that remembers them does not ask the database
        with self.requests() as (transactions, counter):
            self.assertEqual(follow(urls['open']).status_code, 200)
            self.assertEqual(follow(urls['clicks'][0]).status_code, 302)
            self.assertEqual(follow(urls['clicks'][1]).status_code, 302)
        self.assertEqual(transactions, [])
        self.assertEqual(self.writes(counter), [])
        self.assertEqual(self.record_activities('G'), after)

    def test_remembered_flag_set_elsewhere(self):
        """A flag that the process does not know as set is read again: an
        open recorded by another process is not recorded twice"""
        from trytond.modules.marketing_automation import routes
        urls = self.urls('H')
        # It remembers the email, opened by a machine only
        self.assertEqual(
            follow(urls['open'], user_agent=MACHINE).status_code, 200)
        # Another process records the open
        with Transaction().start(DB_NAME, 0) as transaction:
            RecordActivity = Pool().get(
                'marketing.automation.record.activity')
            record_activity, = RecordActivity.search([
                    ('record.record.code', '=', 'FZ-H', 'party.party'),
                    ('activity.name', '=', "Welcome"),
                    ])
            RecordActivity.on_email_opened([record_activity])
            transaction.commit()
        before = self.record_activities('H')
        self.assertFalse(routes._remembered.get(
                DB_NAME, _path_only(urls['open']).split('/')[4][:-4]
                ).opened)
        with self.requests() as (transactions, counter):
            self.assertEqual(follow(urls['open']).status_code, 200)
        self.assertEqual(transactions, [True])
        self.assertEqual(self.writes(counter), [])
        self.assertEqual(self.record_activities('H'), before)
        # Now it knows
        with self.requests() as (transactions, counter):
            self.assertEqual(follow(urls['open']).status_code, 200)
        self.assertEqual(transactions, [])

    @contextlib.contextmanager
    def requests(self):
        """Yield the readonly flag of each transaction started in the block,
        and the statement counter of the block"""
        transactions = []
        start = Transaction.start

        def started(transaction, database_name, user, readonly=False,
                *args, **kwargs):
            if database_name == DB_NAME:
                transactions.append(readonly)
            return start(
                transaction, database_name, user, readonly, *args, **kwargs)
        # It counts on every connection of the cursor class it patches
        with Transaction().start(DB_NAME, 0, readonly=True):
            counter = StatementCounter().__enter__()
        try:
            with unittest.mock.patch.object(Transaction, 'start', started):
                yield transactions, counter
        finally:
            counter.__exit__(None, None, None)

    @staticmethod
    def writes(counter):
        "Return the statements of counter that write"
        return [s for s in counter.statements if re.match(
                    r'\s*(INSERT|UPDATE|DELETE)\b', s, re.IGNORECASE)]

    def test_credentials_ignored(self):
        "The routes never try the credentials that a request carries"
        import base64
        urls = self.urls('D')
        wrong = 'Basic ' + base64.b64encode(b'admin:wrong').decode()

        def attempts():
            with Transaction().start(
                    DB_NAME, 0, readonly=True) as transaction:
                cursor = transaction.connection.cursor()
                cursor.execute('SELECT COUNT(*) FROM res_user_login_attempt')
                return cursor.fetchone()[0]
        before = attempts()
        for authorization in [wrong, wrong, wrong, 'Digest username="a"']:
            for url, status in [
                    (urls['open'], 200), (urls['clicks'][0], 302),
                    (urls['unsubscribe'], 200),
                    (urls['open'].replace(
                            quote(DB_NAME, safe=''), 'nodb'), 404),
                    ]:
                started = time.monotonic()
                response = follow(url, method='HEAD', headers={
                        'Authorization': authorization})
                self.assertEqual(
                    (response.status_code, authorization), (status,
                        authorization), msg=url)
                # A failed login sleeps
                self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(attempts(), before)

    def saturate(self, code, block):
        """Make every event of the email of code happen, so a repeat must
        change nothing"""
        urls = self.urls(code)
        for kwargs in [
                {}, {'user_agent': MACHINE}, {'method': 'HEAD'},
                {'user_agent': SCANNER}]:
            self.assertEqual(follow(urls['open'], **kwargs).status_code, 200)
            for url in urls['clicks']:
                self.assertEqual(follow(url, **kwargs).status_code, 302)
        if block:
            self.assertEqual(follow(urls['unsubscribe'], data={
                        'unsubscribe': '1'}).status_code, 200)
        state = self.record_activities(code)['Welcome']
        self.assertEqual(
            (state['opened'], state['clicked'], state['machine'],
                state['filtered'], state['blocked']),
            (True, True, True, True, block))

    def test_fuzz(self):
        "No generated request answers 5xx nor changes anything"
        from trytond.wsgi import app

        # A and B saw every event, so a valid request changes nothing.
        # B is unsubscribed too. C and D are untouched: their valid tokens
        # are not sent with a method that may count.
        self.saturate('A', block=False)
        self.saturate('B', block=True)
        urls = {code: self.urls(code) for code in 'ABCD'}
        database = quote(DB_NAME, safe='')
        email_tokens, keys, uuids, paths = [], [], [], []
        for code, code_urls in urls.items():
            for url in ([code_urls['open'], code_urls['unsubscribe'],
                        code_urls['unsubscribe_target']]
                    + code_urls['clicks']):
                path = _path_only(url)
                paths.append(path)
                parts = path.split('/')
                kind = parts[3]
                if kind == 'o':
                    email_tokens.append(parts[4][:-len('.gif')])
                elif kind == 'c':
                    email_tokens.append(parts[4])
                    keys.append(parts[5])
                else:
                    uuids.append(parts[4])
                    if len(parts) > 5:
                        keys.append(parts[5])
        email_tokens = sorted(set(email_tokens))
        keys = sorted(set(keys))
        uuids = sorted(set(uuids))
        tokens_of = {
            code: {p.split('/')[4].replace('.gif', '')
                for p in map(_path_only, [urls[code]['open']]
                    + urls[code]['clicks'])}
            for code in urls}
        uuid_of = {
            code: _path_only(urls[code]['unsubscribe']).split('/')[4]
            for code in urls}
        # The tokens whose valid requests count
        live_tokens = tokens_of['C'] | tokens_of['D']
        live_uuids = {uuid_of['A'], uuid_of['C'], uuid_of['D']}
        self.assertEqual(len(email_tokens), 4)
        self.assertEqual(len(uuids), 4)

        all_tokens = email_tokens + uuids
        databases = st.one_of(
            st.just(database), st.just(database), st.just(DB_NAME),
            mutations([database]), segments())
        token = tokens(all_tokens, 32)
        key = tokens(keys, 16)
        routes = st.one_of(
            st.builds('/m/{}/o/{}.gif'.format, databases, token),
            st.builds('/m/{}/c/{}/{}'.format, databases, token, key),
            st.builds('/m/{}/u/{}'.format, databases, token),
            st.builds('/m/{}/u/{}/{}'.format, databases, token, key),
            # Valid URLs with hostile methods, queries, headers and bodies
            st.builds('/m/{}/o/{}.gif'.format, st.just(database),
                st.sampled_from(email_tokens)),
            st.builds('/m/{}/c/{}/{}'.format, st.just(database),
                st.sampled_from(email_tokens), st.sampled_from(keys)),
            st.builds('/m/{}/u/{}'.format, st.just(database),
                st.sampled_from(uuids)),
            st.builds('/m/{}/u/{}/{}'.format, st.just(database),
                st.sampled_from(uuids), st.sampled_from(keys)),
            )
        targets = st.builds(
            lambda path, suffix, query: path + suffix + (
                '' if query is None else '?' + query),
            st.one_of(
                routes,
                routes,
                routes,
                routes,
                mutations(paths),
                st.lists(segments(), max_size=6).map(
                    lambda s: '/m/' + '/'.join(s)),
                st.lists(st.sampled_from(
                        [database, 'o', 'c', 'u', 'm', '.gif'] + all_tokens
                        + keys + NASTY), max_size=7).map(
                    lambda s: '/m/' + '/'.join(s)),
                ),
            st.sampled_from([''] * 8 + ['/', '//', '.gif', '/.', '/..']),
            queries())
        requests = st.lists(st.tuples(
                st.sampled_from(WEIGHTED_METHODS), targets, headers(),
                bodies()),
            min_size=BATCH, max_size=BATCH)

        statuses = Counter()
        reached = Counter()
        counts = {'requests': 0, '5xx': 0, 'changes': 0, 'live': 0}
        adapter_map = app.url_map

        def route(env):
            "Return the name of the module's endpoint of env and its args"
            adapter = adapter_map.bind_to_environ(env)
            try:
                endpoint, args = adapter.match()
            except Exception:
                return None, {}
            if endpoint.__name__ in {
                    'email_open', 'email_click', 'unsubscribe'}:
                return endpoint.__name__, args
            return None, {}

        def live(env, endpoint, args):
            "Tell if a valid request of env may legitimately count"
            if args.get('database_name') != DB_NAME:
                return False
            if endpoint in {'email_open', 'email_click'}:
                return args.get('token') in live_tokens
            if endpoint == 'unsubscribe':
                return (env['REQUEST_METHOD'] == 'POST'
                    and args.get('record_uuid') in live_uuids)
            return False

        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True,
            database=None, print_blob=True,
            suppress_health_check=list(HealthCheck))
        @given(requests)
        def fuzz(batch):
            before = snapshot()
            for method, target, header_list, body in batch:
                env = environ(method, target, header_list, body)
                endpoint, args = route(env)
                if live(env, endpoint, args):
                    # Sent as a method that is not routed
                    env['REQUEST_METHOD'] = 'PUT'
                    counts['live'] += 1
                    endpoint, args = route(env)
                if endpoint:
                    valid = (args.get('database_name') == DB_NAME
                        and all(v in all_tokens or v in keys
                            for k, v in args.items()
                            if k != 'database_name'))
                    reached[endpoint, valid] += 1
                status = call(env)
                statuses[status] += 1
                counts['requests'] += 1
                if status >= 500:
                    counts['5xx'] += 1
                self.assertLess(status, 500, msg=(method, target[:300],
                        header_list, body[:100]))
            after = snapshot()
            if after != before:
                counts['changes'] += 1
            self.assertEqual(after, before, msg=batch)

        started = time.monotonic()
        with warnings.catch_warnings():
            # The repr of the strategies is long
            warnings.simplefilter('ignore', HypothesisWarning)
            fuzz()
        report('fuzz: %s requests, 5xx=%s, state changes=%s' % (
                counts['requests'], counts['5xx'], counts['changes']))
        report('fuzz: statuses %s; reached the routes (with all tokens '
            'valid) %s; %s valid tokens sent unrouted; %.0f s' % (
                dict(sorted(statuses.items())),
                ', '.join('%s %s (%s)' % (
                        name, reached[name, True] + reached[name, False],
                        reached[name, True])
                    for name in ['email_open', 'email_click', 'unsubscribe']),
                counts['live'], time.monotonic() - started))
        self.assertGreaterEqual(counts['requests'], 10_000)
        self.assertEqual(counts['5xx'], 0)
        self.assertEqual(counts['changes'], 0)


# The event storm ------------------------------------------------------------

STORM_SETUP = r'''
"Set up the storm database with proteus and print the URLs of the email"
import contextlib
import datetime as dt
import email
import email.policy
import json
import sys

from aiosmtpd.controller import Controller
from lxml import html
from proteus import Model
from proteus import config as pconfig

config_file, database, smtp_port, template = sys.argv[1:5]
received = []


class Handler:
    async def handle_DATA(self, server, session, envelope):
        received.append(envelope.content)
        return '250 OK'


controller = Controller(Handler(), hostname='127.0.0.1', port=int(smtp_port))
controller.start()
try:
    pconfig.set_trytond(database=database, config_file=config_file)
    Activity = Model.get('marketing.automation.activity')
    Cron = Model.get('ir.cron')
    Party = Model.get('party.party')
    Scenario = Model.get('marketing.automation.scenario')

    party = Party(name="Storm", code='STORM-1')
    party.contact_mechanisms.new(type='email', value='storm@example.com')
    party.save()
    scenario = Scenario(name="Storm", model='party.party')
    scenario.domain = '[["code", "=", "STORM-1"]]'
    scenario.save()
    root = Activity(parent=scenario, name="Welcome", action='send_email')
    root.email_from = 'shop@example.com'
    root.email_title = "Hello ${record.name}"
    root.email_template = template
    root.save()
    for name, on, days in [
            ("Opened", 'email_opened', 1),
            ("Not opened", 'email_opened_not', 2),
            ("Clicked", 'email_clicked', 1),
            ("Not clicked", 'email_clicked_not', 2),
            ]:
        child = Activity(parent=root, name=name)
        child.on = on
        child.delay = dt.timedelta(days=days)
        child.save()
    scenario.click('run')
    trigger, = Cron.find([
            ('method', '=', 'marketing.automation.scenario|trigger')])
    process, = Cron.find([
            ('method', '=', 'marketing.automation.record.activity|process')])
    trigger.click('run_once')
    process.click('run_once')
finally:
    controller.stop()

message, = [email.message_from_bytes(m, policy=email.policy.default)
    for m in received]
document = html.document_fromstring(
    message.get_body(preferencelist=('html',)).get_content())
print(json.dumps({
            'links': [str(u) for u in document.xpath('//a/@href')],
            'images': [str(u) for u in document.xpath('//img/@src')],
            }))
'''


def executable(name):
    return os.path.join(os.path.dirname(sys.executable), name)


class BatchesTestCase(unittest.TestCase):
    "The requests that wait at the same time share one transaction"

    def gather(self, work, count):
        """Call work through Batches from count threads, the first alone,
        the others while it works, and return their results or errors"""
        from trytond.modules.marketing_automation import routes
        started, release = threading.Event(), threading.Event()
        calls = []

        def held(database_name, items):
            calls.append(list(items))
            if len(calls) == 1:
                started.set()
                release.wait(10)
            return work(items)
        batches = routes.Batches(held)

        def call(item):
            try:
                return batches('db', item)
            except Exception as exception:
                return exception
        with ThreadPoolExecutor(count) as executor:
            first = executor.submit(call, 0)
            self.assertTrue(started.wait(10))
            others = [executor.submit(call, i) for i in range(1, count)]
            deadline = time.monotonic() + 10
            while (len(batches._waiting['db']) < count - 1
                    and time.monotonic() < deadline):
                time.sleep(0.01)
            release.set()
            results = [f.result(10) for f in [first] + others]
        return calls, results

    def test_gathered(self):
        "The requests that wait are served by one call, each its result"
        calls, results = self.gather(lambda items: [i * 2 for i in items], 5)
        self.assertEqual(calls, [[0], [1, 2, 3, 4]])
        self.assertEqual(results, [0, 2, 4, 6, 8])

    def test_error(self):
        "A failure of the work fails the requests it served, not the next"
        def work(items):
            if 2 in items:
                raise ValueError(items)
            return items
        calls, results = self.gather(work, 4)
        self.assertEqual(calls, [[0], [1, 2, 3]])
        self.assertEqual(results[0], 0)
        for result in results[1:]:
            self.assertIsInstance(result, ValueError)


class StormTestCase(unittest.TestCase):
    "A storm of opens and clicks on the same email, on a running server"

    def setUp(self):
        super().setUp()
        import trytond.config as config
        self.uri = config.get('database', 'uri') or 'sqlite://'
        self.backend = self.uri.split(':', 1)[0]
        self.directory = tempfile.mkdtemp(prefix='ma-storm-')
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.database = 'ma_storm_%s' % os.getpid()
        self.http_port = free_port()
        self.smtp_port = free_port()
        self.base = 'http://127.0.0.1:%s' % self.http_port
        self.config_file = os.path.join(self.directory, 'trytond.conf')
        with open(self.config_file, 'w') as fp:
            fp.write('\n'.join([
                        '[database]',
                        'uri = %s' % self.uri,
                        'path = %s' % self.directory,
                        '[web]',
                        'listen = 127.0.0.1:%s' % self.http_port,
                        '[email]',
                        'uri = smtp://127.0.0.1:%s' % self.smtp_port,
                        'from = shop@example.com',
                        '[marketing]',
                        'automation_base = %s' % self.base,
                        'automation_click_delay = 0',
                        '[cache]',
                        'clean_timeout = 0',
                        '',
                        ]))
        self.env = AdminDatabases.environ()
        AdminDatabases.create(self.database, self.directory)
        self.addCleanup(AdminDatabases.drop, self.database, self.directory)

    def connect(self):
        "Return a DB-API connection to the storm database"
        if self.backend == 'postgresql':
            import psycopg
            return psycopg.connect(self.uri.rstrip('/') + '/' + self.database)
        import sqlite3
        return sqlite3.connect(
            os.path.join(self.directory, self.database + '.sqlite'))

    def setup_data(self):
        process = subprocess.run([
                sys.executable, '-P', '-c', STORM_SETUP, self.config_file,
                self.database, str(self.smtp_port), TEMPLATE],
            env=self.env, check=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, timeout=300)
        return json.loads(process.stdout.strip().splitlines()[-1])

    def start_server(self):
        log = open(os.path.join(self.directory, 'trytond.log'), 'wb')
        self.addCleanup(log.close)
        env = dict(self.env, TRYTOND_DATABASE_NAMES=self.database)
        server = start_process([
                executable('trytond'), '-c', self.config_file],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, server, 20)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if server.poll() is not None:
                self.fail('trytond exited with %s' % server.returncode)
            try:
                status, _ = self.get('/m/%s/o/%s.gif' % (
                        self.database, '0' * 32))
            except OSError:
                time.sleep(0.2)
                continue
            if status == 404:
                return server
            time.sleep(0.2)
        self.fail('trytond does not answer on port %s' % self.http_port)

    def get(self, path, headers=None):
        connection = http.client.HTTPConnection(
            '127.0.0.1', self.http_port, timeout=120)
        try:
            connection.request('GET', path, headers=headers or {})
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader('Location')
        finally:
            connection.close()

    def rows(self):
        "Return the record activities of the storm by activity name"
        connection = self.connect()
        try:
            cursor = connection.cursor()
            cursor.execute(
                'SELECT a.name, ra.state, ra.at, ra.email_opened, '
                'ra.email_clicked, ra.email_filtered, ra.id '
                'FROM marketing_automation_record_activity AS ra '
                'JOIN marketing_automation_activity AS a '
                'ON a.id = ra.activity ORDER BY ra.id')
            result = {}
            for name, state, at, opened, clicked, filtered, id_ in cursor:
                result.setdefault(name, []).append({
                        'state': state, 'at': at, 'opened': bool(opened),
                        'clicked': bool(clicked),
                        'filtered': bool(filtered), 'id': id_})
            cursor.execute('SELECT COUNT(*) FROM ir_email')
            emails, = cursor.fetchone()
            return result, emails
        finally:
            connection.close()

    def test_storm(self):
        "1,000 opens and clicks at once record one open and one click"
        started = time.monotonic()
        urls = self.setup_data()
        server = self.start_server()
        self.assertIsNone(server.poll())
        ready = time.monotonic()
        opens = [u for u in urls['images'] if '/o/' in u]
        clicks = [u for u in urls['links'] if '/c/' in u]
        self.assertEqual(len(opens), 1)
        self.assertEqual(len(clicks), 2)
        paths = [_path_only(u) for u in opens + clicks]
        before, emails = self.rows()
        self.assertEqual(emails, 1)
        self.assertEqual(before['Welcome'][0]['state'], 'done')
        self.assertEqual(before['Opened'][0]['at'], None)

        # Each thread waits at the barrier, so the first requests go at once
        barrier = threading.Barrier(STORM_WORKERS)
        headers = {'User-Agent': BROWSER}

        def hit(index):
            if index < STORM_WORKERS:
                barrier.wait(timeout=60)
            path = paths[index % len(paths)]
            try:
                return self.get(path, headers)
            except OSError as exception:
                return type(exception).__name__, None

        storm_start = dt.datetime.now().replace(microsecond=0)
        with ThreadPoolExecutor(max_workers=STORM_WORKERS) as executor:
            results = list(executor.map(hit, range(STORM)))
        storm_end = dt.datetime.now().replace(microsecond=0)
        duration = time.monotonic() - ready
        statuses = Counter()
        for index, (status, location) in enumerate(results):
            kind = 'open' if index % len(paths) == 0 else 'click'
            statuses[kind, status] += 1
            if kind == 'click' and status == 302:
                self.assertTrue(location.startswith(
                        'https://shop.example.com/'), location)
        after, emails = self.rows()
        report('storm on %s: %s requests from %s threads in %.1f s '
            '(setup %.0f s): %s' % (
                self.backend, STORM, STORM_WORKERS, duration,
                ready - started, ', '.join('%s %s: %s' % (k + (v,))
                    for k, v in sorted(statuses.items(), key=str))))
        with open(os.path.join(self.directory, 'trytond.log'), 'rb') as fp:
            log = fp.read().decode('utf-8', 'replace')
        errors = [line for line in log.splitlines()
            if 'Traceback' in line or ' ERROR ' in line]

        self.assertEqual(
            {s for s in statuses if s[1] != 200 and s[1] != 302}, set(),
            msg='\n'.join(errors[:20]))
        self.assertEqual(emails, 1)
        welcome, = after['Welcome']
        self.assertEqual(
            (welcome['state'], welcome['opened'], welcome['clicked']),
            ('done', True, True))
        for name, days in [("Opened", 1), ("Clicked", 1)]:
            child, = after[name]
            self.assertEqual(child['state'], 'waiting')
            self.assertIsNotNone(child['at'])
            at = child['at']
            if isinstance(at, str):
                at = dt.datetime.fromisoformat(at)
            # Set once, at the first event of the storm
            self.assertTrue(
                storm_start <= at - dt.timedelta(days=days) <= storm_end,
                (name, at, storm_start, storm_end))
        for name in ["Not opened", "Not clicked"]:
            child, = after[name]
            self.assertEqual(child['state'], 'cancelled')
        self.assertEqual(sum(map(len, after.values())), 5)
