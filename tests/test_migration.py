# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""A site swaps this module in for Tryton's own marketing_automation 8.0

The fixtures are databases made and used by that module. Each one is
updated as "trytond-admin -u marketing_automation" does, then its data, its
waiting work and the links of the emails already sent are checked."""
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
from urllib.parse import urlsplit

from sql import Null

from trytond import backend
from trytond.modules.marketing_automation.tests.tools import (
    follow, run_process, setting, smtp_server)
from trytond.pool import Pool
from trytond.transaction import Transaction

# The databases of Tryton's own module travel with the tests: a clone
# anywhere runs them, and fails without them rather than skip
FIXTURES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'upstream-8.0')
DATABASE = 'upstream80'
BASE = 'http://localhost:8000'
TABLES = [
    'marketing_automation_scenario', 'marketing_automation_activity',
    'marketing_automation_record', 'marketing_automation_record_activity',
    'party_party-unsubscribed-marketing_automation_scenario',
    ]
BROWSER = (
    'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0')


def uri():
    return os.environ.get('TRYTOND_DATABASE__URI', 'sqlite://')


class MigrationTestCase(unittest.TestCase):
    "Update a database of Tryton's own module and go on with it"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.directory = tempfile.mkdtemp(prefix='ma-migration-')
        cls.stack = []
        cls.load()
        cls.config = os.path.join(cls.directory, 'trytond.conf')
        with open(cls.config, 'w') as file:
            file.write('[database]\nuri = %s\npath = %s\n' % (
                    uri(), cls.directory))
        context = setting('database', 'path', cls.directory)
        context.__enter__()
        cls.stack.append(context)
        context = setting('marketing', 'automation_base', BASE)
        context.__enter__()
        cls.stack.append(context)
        cls.before = cls.dump()
        cls.update()
        Pool(DATABASE).init()

    @classmethod
    def tearDownClass(cls):
        if backend.name == 'postgresql':
            cls.psql('postgres',
                'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % DATABASE)
        # The lock last
        for context in reversed(cls.stack):
            context.__exit__(None, None, None)
        shutil.rmtree(cls.directory, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def load(cls):
        if backend.name == 'postgresql':
            # The links of the emails name the database: a run at the same
            # time on the same server waits for this one to end
            import psycopg
            cls.lock = psycopg.connect(
                uri().rstrip('/') + '/postgres', autocommit=True)
            cls.lock.execute(
                "SELECT pg_advisory_lock(hashtext(%s))", (DATABASE,))
            cls.stack.append(cls.lock)
        if backend.name == 'sqlite':
            source = os.path.join(FIXTURES, 'sqlite', DATABASE + '.sqlite.gz')
            with gzip.open(source) as fixture, open(os.path.join(
                        cls.directory, DATABASE + '.sqlite'), 'wb') as file:
                shutil.copyfileobj(fixture, file)
        else:
            cls.psql('postgres', 'DROP DATABASE IF EXISTS "%s"' % DATABASE)
            cls.psql('postgres', 'CREATE DATABASE "%s"' % DATABASE)
            source = os.path.join(FIXTURES, 'postgresql', DATABASE + '.sql.gz')
            with gzip.open(source) as fixture:
                cls.psql(DATABASE, None, input=fixture.read())

    @classmethod
    def psql(cls, database, command, input=None):
        parts = urlsplit(uri())
        args = ['psql', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', parts.hostname or '127.0.0.1', '-p', str(parts.port or 5432),
            '-U', parts.username or 'postgres', '-d', database]
        if command:
            args += ['-c', command]
        subprocess.run(args, input=input, check=True,
            stdout=subprocess.DEVNULL)

    @classmethod
    def update(cls, modules=('-u', 'marketing_automation')):
        """Update the database as the site does when it swaps this module
        in: the other modules are as they were"""
        started = time.monotonic()
        env = dict(os.environ, TRYTOND_DATABASE_NAMES=DATABASE)
        for key in list(env):
            if key.startswith('TRYTOND_DATABASE__'):
                del env[key]
        admin = os.path.join(os.path.dirname(sys.executable), 'trytond-admin')
        process = run_process(
            [admin, '-c', cls.config, '-d', DATABASE, *modules],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=600)
        assert process.returncode == 0, process.stdout[-4000:]
        print('[marketing_automation] update %s of %s: %.0f s' % (
                ' '.join(modules), DATABASE, time.monotonic() - started),
            file=sys.stderr)

    @classmethod
    def dump(cls):
        "Return the rows of the tables of the scenarios"
        rows = {}
        with Transaction().start(DATABASE, 0, readonly=True) as transaction:
            cursor = transaction.connection.cursor()
            for table in TABLES:
                cursor.execute('SELECT id, * FROM "%s" ORDER BY id' % table)
                names = [d[0] for d in cursor.description]
                rows[table] = [dict(zip(names, r)) for r in cursor]
        return rows

    def urls(self):
        kind = 'sqlite' if backend.name == 'sqlite' else 'postgresql'
        with open(os.path.join(FIXTURES, kind, 'urls.json')) as file:
            return json.load(file)

    def test_data_kept(self):
        "Every scenario, activity, record and unsubscribe is kept"
        after = self.dump()
        for table in TABLES:
            self.assertEqual(
                len(after[table]), len(self.before[table]), table)
            for old, new in zip(self.before[table], after[table]):
                for name, value in old.items():
                    self.assertEqual(new[name], value, (table, name))
        # A second update changes nothing
        self.update(('-u', 'marketing_automation'))
        self.assertEqual(self.dump(), after)

    def test_unsubscribed_stays_unsubscribed(self):
        "Dana is still unsubscribed and gets nothing"
        with Transaction().start(DATABASE, 0):
            pool = Pool()
            Party = pool.get('party.party')
            Scenario = pool.get('marketing.automation.scenario')
            dana, = Party.search([('name', '=', 'Dana')])
            newsletter, = Scenario.search([('name', '=', 'Newsletter')])
            self.assertIn(newsletter, dana.marketing_scenario_unsubscribed)
            Scenario.trigger()
            Record = pool.get('marketing.automation.record')
            self.assertEqual(Record.search_count([
                        ('scenario', '=', newsletter.id)]), 8)

    def test_waiting_work_goes_on(self):
        "The due work is sent once by the next processing run"
        with Transaction().start(DATABASE, 0) as transaction:
            pool = Pool()
            RecordActivity = pool.get('marketing.automation.record.activity')
            table = RecordActivity.__table__()
            cursor = transaction.connection.cursor()
            # Four days pass: the delays of the waiting ones are over
            cursor.execute(*table.select(table.id, table.at,
                    where=(table.state == 'waiting') & (table.at != Null)))
            for id_, at in cursor.fetchall():
                cursor.execute(*table.update(
                        [table.at], [at - dt.timedelta(days=4)],
                        where=table.id == id_))
            transaction.commit()
            due = RecordActivity.search([
                    ('state', '=', 'waiting'),
                    ('at', '<=', dt.datetime.now()),
                    ('record.blocked', '=', False),
                    ('activity.action', '=', 'send_email'),
                    ])
            recipients = sorted(
                '%s@example.org' % ra.record.record.name.lower()
                for ra in due)
            self.assertTrue(recipients)
            self.assertNotIn('dana@example.org', recipients)
            with smtp_server() as server:
                RecordActivity.process()
                RecordActivity.process()
            self.assertEqual(
                sorted(r for _, (r,) in server.envelopes), recipients)

    def test_links_of_sent_emails(self):
        "Every link of the emails already sent works, safely"
        urls = self.urls()
        for address, links in sorted(urls.items()):
            response = follow(links['unsubscribe'])
            self.assertEqual(response.status_code, 200, address)
            # Only a person who has not left yet is asked
            self.assertEqual(
                b'<form method="post">' in response.data,
                not self.blocked(address), address)
        for address in ['eli@example.org', 'fern@example.org']:
            self.assertFalse(self.blocked(address))
        # A POST blocks; next is shown, never followed
        response = follow(
            urls['eli@example.org']['unsubscribe'], data={'unsubscribe': '1'})
        self.assertEqual(response.status_code, 200)
        self.assertIn(b'https://shop.example.org/goodbye', response.data)
        self.assertTrue(self.blocked('eli@example.org'))
        # RFC 8058 one-click
        response = follow(
            urls['fern@example.org']['unsubscribe'],
            data={'List-Unsubscribe': 'One-Click'})
        self.assertEqual(response.status_code, 200)
        self.assertTrue(self.blocked('fern@example.org'))
        # The open image
        response = follow(BASE + '/m/empty.gif')
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.mimetype, 'image/gif')
        # The tracked links of web_shortener
        response = follow(urls['gus@example.org']['click'])
        self.assertIn(response.status_code, {301, 302})
        self.assertEqual(
            response.headers['Location'],
            'https://shop.example.org/news?id=42')
        response = follow(urls['gus@example.org']['pixel'])
        self.assertIn(response.status_code, {301, 302})
        self.assertTrue(
            response.headers['Location'].endswith('/m/empty.gif'))
        self.assertEqual(self.events('gus@example.org'), (True, True))
        # A bad token answers 4xx
        response = follow(
            BASE + '/m/dXBzdHJlYW04MA/unsubscribe?r=%27%3B--')
        self.assertEqual(response.status_code, 404)

    def blocked(self, address):
        with Transaction().start(DATABASE, 0, readonly=True):
            Record = Pool().get('marketing.automation.record')
            record, = Record.search([
                    ('record.name', '=', address.split('@')[0].title(),
                        'party.party'),
                    ('scenario.name', '=', 'Newsletter'),
                    ])
            return record.blocked

    def events(self, address):
        with Transaction().start(DATABASE, 0, readonly=True):
            RecordActivity = Pool().get(
                'marketing.automation.record.activity')
            record_activity, = RecordActivity.search([
                    ('record.record.name', '=',
                        address.split('@')[0].title(), 'party.party'),
                    ('activity.name', '=', 'News'),
                    ])
            return record_activity.email_opened, record_activity.email_clicked
