# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Fault injection: nothing lost, nothing sent twice

The emails travel over SMTP on the loopback to a real aiosmtpd server that
is stopped, answers 4xx or 5xx, or drops the connection in the middle of a
message. The processing runs in real subprocesses (tests/faults/helper.py,
trytond-worker, trytond-cron) against a database of their own, because the
delivery commits after every email: the rollback isolation of the other
tests cannot hold it. Some of those processes are killed with SIGKILL.
Each process runs in a process group of its own that its test stops whole,
with the children it started.

Each test prints one line:
    fault <name>: due=… delivered=… failed=… lost=… duplicated=…
where delivered counts the distinct recipients the server accepted a
message for, failed the record activities that show a failed state with an
error, lost = due - delivered - failed and duplicated the messages the server
accepted beyond the first one for a recipient."""
import email
import email.policy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from collections import Counter
from email.utils import parseaddr
from urllib.parse import urlsplit

from trytond.modules.marketing_automation.tests.tools import (
    DROP, AdminDatabases, SMTPServer, logging_config, run_process,
    start_process, stop_process)

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, 'faults', 'helper.py')
BIN = os.path.dirname(sys.executable)
DATABASE_URI = os.environ.get('TRYTOND_DATABASE__URI', 'sqlite://')
BACKEND = urlsplit(DATABASE_URI).scheme.split('+')[0] or 'sqlite'
# The crash test kills at random points chosen with this seed
SEED = int(os.environ.get('MA_FAULT_SEED', 20261128))
# The condition fails to evaluate on a party whose code is not a number
CONDITION = json.dumps({
        '__class__': 'Greater',
        's1': {'__class__': 'Eval', 'v': 'self.code', 'd': '0'},
        's2': -1,
        'e': False,
        })


class FaultySMTPServer(SMTPServer):
    """The SMTP server of the tests, whose faults the test chooses

    rcpt(address, count) and data(to, total) may return an SMTP answer, or
    DROP for data, to refuse what the server would otherwise accept; count
    is the calls for that address and total the messages so far."""

    def __init__(self, rcpt=None, data=None, delay=0):
        super().__init__(delay=delay)
        self.rcpt, self.data = rcpt, data
        self.faulted = set()
        self.data_calls = Counter()
        self.rcpt_calls = Counter()

    def answer_rcpt(self, address):
        with self._lock:
            self.rcpt_calls[address] += 1
            count = self.rcpt_calls[address]
        answer = self.rcpt and self.rcpt(address, count)
        if answer:
            with self._lock:
                self.faulted.add(address)
        return answer

    def answer_data(self, sender, recipients, content):
        to = recipients[0]
        with self._lock:
            self.data_calls[to] += 1
            total = sum(self.data_calls.values())
        answer = self.data and self.data(to, total)
        if answer:
            with self._lock:
                self.faulted.add(to)
        return answer

    @property
    def recipients(self):
        with self._lock:
            return Counter(r for _, rs in self.envelopes for r in rs)


class FaultTestCase(unittest.TestCase):
    """The machinery of the fault tests: a database of their own made from
    a template, its configuration, the steps and the trytond processes"""

    @classmethod
    def setUpClass(cls):
        cls.directory = tempfile.mkdtemp(prefix='ma-faults-')
        cls.databases = []
        cls.logconf = logging_config(cls.directory)

    @classmethod
    def tearDownClass(cls):
        for name in reversed(cls.databases):
            AdminDatabases.drop(name, cls.directory)
        shutil.rmtree(cls.directory, ignore_errors=True)

    @classmethod
    def _write_conf(cls, name, smtp_port=None, **marketing):
        "Write a configuration; with no smtp_port, no email may be sent"
        marketing.setdefault('automation_base', 'http://example.com')
        marketing.setdefault('automation_retry_delay', 60)
        worker = marketing.pop('worker', False)
        path = os.path.join(cls.directory, name + '.conf')
        if BACKEND == 'postgresql':
            database = 'uri = %s\n' % DATABASE_URI
        else:
            database = 'uri = sqlite://\npath = %s\n' % cls.directory
        with open(path, 'w') as file:
            file.write('[database]\n' + database)
            if smtp_port:
                file.write('[email]\nuri = smtp://127.0.0.1:%s\n'
                    'from = marketing@example.com\n' % smtp_port)
            file.write('[marketing]\n' + ''.join(
                    '%s = %s\n' % i for i in marketing.items()))
            file.write('[queue]\nworker = %s\n' % worker)
        return path

    def _database(self):
        "Create a fresh database as trytond-admin makes it"
        name = 'ma_fault_%s_%s' % (os.getpid(), len(self.databases))
        AdminDatabases.create(name, self.directory)
        self.databases.append(name)
        return name

    def _server(self, **kwargs):
        server = FaultySMTPServer(**kwargs)
        self.addCleanup(server.stop)
        return server

    def _helper_command(self, conf, database, command, **args):
        return [sys.executable, '-P', HELPER, conf, database, command,
            json.dumps(args)]

    def helper(self, conf, database, command, **args):
        "Run a step in a subprocess and return its result"
        process = run_process(
            self._helper_command(conf, database, command, **args),
            env=AdminDatabases.environ(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, timeout=300)
        return self._result(process.returncode, process.stdout,
            process.stderr, command)

    def _result(self, returncode, stdout, stderr, command):
        for line in stdout.splitlines():
            if line.startswith('@@result '):
                return json.loads(line[len('@@result '):])
        self.fail('%s failed (%s):\n%s\n%s' % (
                command, returncode, stdout[-2000:], stderr[-4000:]))

    def spawn(self, conf, database, command, **args):
        "Start a step in a subprocess that the test stops at its end"
        process = start_process(
            self._helper_command(conf, database, command, **args),
            env=AdminDatabases.environ(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        self.addCleanup(stop_process, process)
        return process

    def _spawn_trytond(self, program, conf, database, *options):
        log = open(os.path.join(self.directory, '%s-%s.log' % (
                    program, time.monotonic_ns())), 'w+')
        self.addCleanup(log.close)
        process = start_process(
            [os.path.join(BIN, program), '-c', conf, '-d', database,
                '--logconf', self.logconf] + list(options),
            env=AdminDatabases.environ(), stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, process)
        return process, log

    def run_with_workers(self, conf, database, timeout=180):
        """Run rounds of trytond-cron and two direct runs at once with two
        trytond-worker until nothing is due nor unsent

        Return the last stats, the number of rounds and the workers."""
        workers = [self._spawn_trytond(
                    'trytond-worker', conf, database, '-n', '1')
            for _ in range(2)]
        deadline = time.monotonic() + timeout
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            self.helper(conf, database, 'cron-due')
            start_at = time.time() + 2
            runs = [self.spawn(conf, database, 'process', start_at=start_at)
                for _ in range(2)]
            cron, _ = self._spawn_trytond('trytond-cron', conf, database, '-1')
            for run in runs:
                stdout, stderr = run.communicate(timeout=120)
                self._result(run.returncode, stdout, stderr, 'process')
            cron.wait(120)
            # Let the workers execute what the runs queued
            while time.monotonic() < deadline:
                if not self.helper(conf, database, 'queue')['unfinished']:
                    break
                time.sleep(0.5)
            stats = self.helper(conf, database, 'stats')
            # A deferred email is due later: it is not left behind
            due = [m for m in self.mails(stats)
                if m['state'] == 'waiting' and not m['deferred']]
            unsent = [e for e in self.outbox(stats) if e['status'] != 'sent']
            if not due and not unsent:
                break
        for process, _ in workers:
            self.assertIsNone(process.poll(), msg='a worker died')
        return stats, rounds, workers

    def mails(self, stats):
        "Return the record activities of the email activity"
        return [a for a in stats['activities'] if a['activity'] == 'Mail']

    def figures(self, name, stats, server, due=None, allowed=0):
        """Print and check the figures of the fault run

        due are the parties whose email is due."""
        mails = self.mails(stats)
        if due is None:
            due = {m['party'] for m in mails}
        address = {'%s@example.com' % p: p for p in due}
        received = server.recipients
        delivered = {address[a] for a in received if a in address}
        failed = {m['party'] for m in mails
            if m['state'] == 'failed' and m['error']}
        lost = due - delivered - failed
        duplicated = sum(received.values()) - len(received)
        print('fault %s: due=%s delivered=%s failed=%s lost=%s '
            'duplicated=%s' % (name, len(due), len(delivered), len(failed),
                len(lost), duplicated), file=sys.stderr, flush=True)
        self.assertEqual(lost, set(), msg='lost emails')
        self.assertLessEqual(duplicated, allowed, msg='duplicated emails')
        self.assertFalse(delivered & failed,
            msg='delivered emails shown as failed')
        self.assertFalse(set(received) - set(address),
            msg='emails to unexpected recipients')
        return delivered, failed, duplicated

    def outbox(self, stats, status=None):
        return [e for e in stats['emails']
            if status is None or e['status'] == status]

    def by_party(self, stats):
        "Return the outbox email of each party"
        result = {}
        for row in stats['emails']:
            party = parseaddr(row['to'])[1].split('@')[0]
            self.assertNotIn(party, result, msg='two emails composed')
            result[party] = row
        return result


class MarketingAutomationFaultTestCase(FaultTestCase):
    "Fault injection on the delivery, the processing and the enrolment"

    def test_fault_smtp_server_down(self):
        "The server is stopped: all stay pending, then go once"
        server = self._server()
        database = self._database()
        conf = self._write_conf(database, server.port)
        self.helper(conf, database, 'setup', parties=20)

        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        self.assertEqual(len(self.outbox(stats)), 20)
        for row in self.outbox(stats):
            self.assertEqual(row['status'], 'pending')
            self.assertEqual(row['attempts'], 1)
            self.assertTrue(row['error'])
            # The retry waits automation_retry_delay
            delay = (time.mktime(time.strptime(
                        row['next_try'][:19], '%Y-%m-%dT%H:%M:%S'))
                - time.mktime(time.strptime(
                        stats['now'][:19], '%Y-%m-%dT%H:%M:%S')))
            self.assertGreater(delay, 30)
        for mail in self.mails(stats):
            self.assertEqual(mail['state'], 'done')

        # The server is back, but the emails wait for their next try
        server.start()
        self.helper(conf, database, 'process')
        self.assertEqual(server.messages, [])
        stats = self.helper(conf, database, 'stats')
        self.assertEqual(
            {r['attempts'] for r in self.outbox(stats)}, {1})

        self.helper(conf, database, 'make-due')
        self.helper(conf, database, 'process')
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        self.assertEqual(len(self.outbox(stats, 'sent')), 20)
        self.assertEqual({r['attempts'] for r in self.outbox(stats)}, {2})
        delivered, _, _ = self.figures('server_down', stats, server)
        self.assertEqual(len(delivered), 20)

    def _transient(self, name, data, count):
        "Run a delivery where data() refuses count emails once"
        server = self._server(data=data).start()
        database = self._database()
        conf = self._write_conf(database, server.port)
        self.helper(conf, database, 'setup', parties=20)

        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        outbox = self.by_party(stats)
        pending = {p for p, r in outbox.items() if r['status'] == 'pending'}
        affected = {a.split('@')[0] for a in server.faulted}
        self.assertEqual(len(affected), count)
        self.assertEqual(pending, affected)
        for party in pending:
            self.assertEqual(outbox[party]['attempts'], 1)
            self.assertTrue(outbox[party]['error'])
        # The others went on in the same run
        self.assertEqual(
            set(outbox) - pending,
            {p for p, r in outbox.items() if r['status'] == 'sent'})
        self.assertEqual(len(server.messages), 20 - count)

        self.helper(conf, database, 'make-due')
        self.helper(conf, database, 'process')
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        outbox = self.by_party(stats)
        self.assertEqual(
            {p for p, r in outbox.items() if r['status'] == 'sent'},
            set(outbox))
        for party, row in outbox.items():
            self.assertEqual(
                row['attempts'], 2 if party in affected else 1)
        delivered, _, _ = self.figures(name, stats, server)
        self.assertEqual(len(delivered), 20)
        return stats

    def test_fault_smtp_451(self):
        "The server answers 451 to the first messages: retried, sent once"
        self._transient('smtp_451',
            lambda to, total: '451 4.3.0 Try later' if total <= 5 else None,
            5)

    def test_fault_smtp_drop(self):
        "The server hangs up after the DATA: that email waits, others go"
        # The 3rd, and the 8th and 9th in a row, over a new connection
        drops = {3, 8, 9}
        self._transient('smtp_drop',
            lambda to, total: DROP if total in drops else None, len(drops))

    def test_fault_smtp_drop_mid_data(self):
        "A raw server hangs up in the middle of the DATA of some emails"
        server = MidDataServer(drop={2, 6}).start()
        self.addCleanup(server.stop)
        database = self._database()
        conf = self._write_conf(database, server.port)
        self.helper(conf, database, 'setup', parties=10)

        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        outbox = self.by_party(stats)
        pending = {p for p, r in outbox.items() if r['status'] == 'pending'}
        self.assertEqual(
            pending, {a.split('@')[0] for a in server.faulted})
        self.assertEqual(len(pending), 2)
        for party in pending:
            self.assertEqual(outbox[party]['attempts'], 1)
            self.assertTrue(outbox[party]['error'])
        self.assertEqual(len(server.messages), 8)

        self.helper(conf, database, 'make-due')
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        self.assertEqual(len(self.outbox(stats, 'sent')), 10)
        delivered, _, _ = self.figures('smtp_drop_mid_data', stats, server)
        self.assertEqual(len(delivered), 10)

    def test_fault_smtp_permanent(self):
        "5xx answers fail the email, visibly, and cancel what follows"
        server = self._server(
            rcpt=lambda address, count: (
                '550 5.1.1 No such user' if address.startswith('p0003@')
                else None),
            data=lambda to, total: (
                '554 5.7.1 Message rejected' if to.startswith('p0006@')
                else None)).start()
        database = self._database()
        conf = self._write_conf(database, server.port)
        self.helper(conf, database, 'setup', parties=20)

        self.helper(conf, database, 'process')
        self.helper(conf, database, 'make-due')
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        outbox = self.by_party(stats)
        for party, code in [('p0003', '550'), ('p0006', '554')]:
            self.assertEqual(outbox[party]['status'], 'failed')
            self.assertEqual(outbox[party]['attempts'], 1)
            self.assertIn(code, outbox[party]['error'])
        # Not retried: the server saw them once
        self.assertEqual(server.rcpt_calls['p0003@example.com'], 1)
        self.assertEqual(server.data_calls['p0006@example.com'], 1)
        states = {(a['activity'], a['party']): a
            for a in stats['activities']}
        for party in ['p0003', 'p0006']:
            self.assertEqual(states[('Mail', party)]['state'], 'failed')
            self.assertTrue(states[('Mail', party)]['error'])
            self.assertEqual(states[('Later', party)]['state'], 'cancelled')
        self.assertEqual(states[('Later', 'p0004')]['state'], 'waiting')
        delivered, failed, _ = self.figures('smtp_permanent', stats, server)
        self.assertEqual((len(delivered), len(failed)), (18, 2))

    def test_fault_max_attempts(self):
        "A recipient always answered 451 is given up after max attempts"
        server = self._server(
            data=lambda to, total: (
                '451 4.2.0 Mailbox busy' if to.startswith('p0002@')
                else None)).start()
        database = self._database()
        conf = self._write_conf(database, server.port,
            automation_max_attempts=3, automation_retry_delay=0)
        self.helper(conf, database, 'setup', parties=10)

        self.helper(conf, database, 'process')
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        outbox = self.by_party(stats)
        self.assertEqual(outbox['p0002']['status'], 'failed')
        self.assertEqual(outbox['p0002']['attempts'], 3)
        self.assertIn('451', outbox['p0002']['error'])
        self.assertEqual(server.data_calls['p0002@example.com'], 3)
        states = {(a['activity'], a['party']): a
            for a in stats['activities']}
        self.assertEqual(states[('Mail', 'p0002')]['state'], 'failed')
        self.assertIn('451', states[('Mail', 'p0002')]['error'])
        self.assertEqual(states[('Later', 'p0002')]['state'], 'cancelled')
        delivered, failed, _ = self.figures('max_attempts', stats, server)
        self.assertEqual((len(delivered), len(failed)), (9, 1))

    def test_fault_isolation(self):
        "A raising template, a party without email and a broken condition"
        server = self._server().start()
        database = self._database()
        conf = self._write_conf(database, server.port)
        self.helper(conf, database, 'setup', parties=20,
            names={'2': 'bad', '5': 'noemail'}, no_email=['noemail'],
            codes={'8': 'oops'}, condition=CONDITION,
            template='<div><p>Hi ${record.name.upper() '
            'if record.name != \'bad\' else 1/0}</p></div>')

        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        states = {a['party']: a for a in self.mails(stats)}
        bad = {'bad', 'noemail', 'p0008'}
        for party in bad:
            self.assertEqual(states[party]['state'], 'failed', msg=party)
            self.assertTrue(states[party]['error'], msg=party)
        for party, state in states.items():
            if party not in bad:
                self.assertEqual(state['state'], 'done', msg=party)
        # The others are sent in the same run
        self.assertEqual(len(server.messages), 17)

        # And the failed ones are not retried
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        self.assertEqual(
            {a['party'] for a in self.mails(stats) if a['state'] == 'failed'},
            bad)
        for party in bad:
            print('fault isolation: %s: %s' % (party, states[party]['error']),
                file=sys.stderr)
        delivered, failed, _ = self.figures('isolation', stats, server)
        self.assertEqual((len(delivered), len(failed)), (17, 3))

    def test_fault_crash(self):
        "SIGKILL at random points of a run of hundreds of emails"
        count, kills = 300, 3
        rng = random.Random(SEED)
        server = self._server(delay=0.004).start()
        database = self._database()
        conf = self._write_conf(database, server.port,
            automation_claim_size=50)
        self.helper(conf, database, 'setup', parties=count)
        print('fault crash: seed=%s (MA_FAULT_SEED)' % SEED, file=sys.stderr)

        for kill in range(1, kills + 1):
            before = len(server.messages)
            process = self.spawn(conf, database, 'process')
            self.assertEqual(process.stdout.readline().strip(), '@@ready')
            started = time.monotonic()
            if kill > 1:
                # The first kill falls anywhere, the others in the sending
                deadline = started + 60
                while (len(server.messages) == before
                        and process.poll() is None
                        and time.monotonic() < deadline):
                    time.sleep(0.01)
            time.sleep(rng.uniform(0.1, 3) if kill == 1
                else rng.uniform(0, 1))
            pause = time.monotonic() - started
            killed = process.poll() is None
            if killed:
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            stats = self.helper(conf, database, 'stats')
            status = Counter(r['status'] for r in self.outbox(stats))
            received = server.recipients
            print('fault crash kill %s: after %.2fs killed=%s '
                'received=%s (+%s) duplicated=%s outbox=%s' % (
                    kill, pause, killed, len(server.messages),
                    len(server.messages) - before,
                    sum(received.values()) - len(received), dict(status)),
                file=sys.stderr)
            self.assertLessEqual(
                sum(received.values()) - len(received), kill)

        # The final clean run takes back the claims of the killed runs
        final = self._write_conf(database + '-final', server.port,
            automation_claim_timeout=0)
        self.helper(final, database, 'process')
        stats = self.helper(final, database, 'stats')
        self.assertEqual(len(self.outbox(stats, 'sent')), count)
        self.assertEqual(len(self.outbox(stats)), count)
        delivered, _, duplicated = self.figures(
            'crash', stats, server, allowed=kills)
        self.assertEqual(len(delivered), count)
        # Only the email in the SMTP transaction may go twice
        self.assertLessEqual(max(server.recipients.values()), 2)

    @unittest.skipIf(BACKEND != 'postgresql',
        "concurrent workers need PostgreSQL: SQLite has one writer and no "
        "SELECT ... FOR UPDATE SKIP LOCKED")
    def test_fault_concurrent_workers(self):
        "Two trytond-worker, trytond-cron and two direct runs at once"
        count = 300
        server = self._server(delay=0.002).start()
        database = self._database()
        conf = self._write_conf(database, server.port, worker=True,
            automation_claim_size=20, automation_batch_size=50)
        self.helper(conf, database, 'setup', parties=count)
        stats, rounds, workers = self.run_with_workers(conf, database)
        errors = 0
        for _, log in workers:
            log.seek(0)
            errors += log.read().count('Traceback')
        print('fault concurrent_workers: rounds=%s outbox=%s tasks=%s '
            'worker tracebacks=%s' % (
                rounds, dict(Counter(
                        e['status'] for e in self.outbox(stats))),
                self.helper(conf, database, 'queue')['tasks'], errors),
            file=sys.stderr)
        self.by_party(stats)
        self.assertEqual(len(self.outbox(stats, 'sent')), count)
        delivered, _, _ = self.figures('concurrent_workers', stats, server)
        self.assertEqual(len(delivered), count)

    @unittest.skipIf(BACKEND != 'postgresql',
        "concurrent runs need PostgreSQL: SQLite has one writer and no "
        "SELECT ... FOR UPDATE SKIP LOCKED")
    def test_fault_concurrent_process(self):
        "Three RecordActivity.process at once, without worker"
        count, runs = 300, 3
        server = self._server(delay=0.002).start()
        database = self._database()
        conf = self._write_conf(database, server.port,
            automation_claim_size=20, automation_batch_size=50)
        self.helper(conf, database, 'setup', parties=count)
        start_at = time.time() + 2
        processes = [self.spawn(conf, database, 'process', start_at=start_at)
            for _ in range(runs)]
        failures = 0
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            if '@@result ' not in stdout:
                # A run may give up on a conflict: the next one goes on
                failures += 1
                print(stderr[-2000:], file=sys.stderr)
        self.helper(conf, database, 'process')
        stats = self.helper(conf, database, 'stats')
        print('fault concurrent_process: runs=%s failed runs=%s outbox=%s' % (
                runs, failures, dict(Counter(
                        e['status'] for e in self.outbox(stats)))),
            file=sys.stderr)
        self.by_party(stats)
        self.assertEqual(len(self.outbox(stats, 'sent')), count)
        delivered, _, _ = self.figures('concurrent_process', stats, server)
        self.assertEqual(len(delivered), count)

    @unittest.skipIf(BACKEND != 'postgresql',
        "concurrent enrolment needs PostgreSQL: SQLite serialises writers")
    def test_fault_concurrent_trigger(self):
        "Two Scenario.trigger at once enrol no record twice"
        count = 300
        database = self._database()
        conf = self._write_conf(database)
        self.helper(conf, database, 'setup', parties=count, trigger=False)
        start_at = time.time() + 2
        runs = [self.spawn(conf, database, 'trigger', start_at=start_at)
            for _ in range(2)]
        outputs = []
        for run in runs:
            stdout, stderr = run.communicate(timeout=120)
            outputs.append(stderr)
            self._result(run.returncode, stdout, stderr, 'trigger')
        stats = self.helper(conf, database, 'stats')
        records = [tuple(r) for r in stats['records']]
        first = len(records)
        self.assertEqual(len(records), len(set(records)), msg='enrolled twice')
        conflicts = sum('could not enrol' in o for o in outputs)

        self.helper(conf, database, 'trigger')
        stats = self.helper(conf, database, 'stats')
        records = [tuple(r) for r in stats['records']]
        self.assertEqual(len(records), len(set(records)), msg='enrolled twice')
        self.assertEqual(len(records), count)
        pairs = [(a['activity'], a['record']) for a in stats['activities']]
        self.assertEqual(len(pairs), len(set(pairs)))
        self.assertEqual(len(self.mails(stats)), count)
        print('fault concurrent_trigger: due=%s enrolled=%s after the '
            'concurrent runs (%s run(s) gave up on a conflict), %s after one '
            'more run, duplicated=0' % (count, first, conflicts,
                len(records)), file=sys.stderr)

    @unittest.skipIf(BACKEND != 'postgresql',
        "concurrent workers need PostgreSQL: SQLite has one writer")
    def test_fault_frequency_cap_workers(self):
        """Three scenarios to the same parties, a cap of one email, two
        trytond-worker, trytond-cron and two direct runs at once: each party
        gets one email and the others wait, deferred

        A batch holds the record activities of one scenario: the workers
        compose for the same parties at once."""
        count, cap = 20, 1
        server = self._server(delay=0.002).start()
        database = self._database()
        conf = self._write_conf(database, server.port, worker=True,
            automation_claim_size=10, automation_batch_size=count)
        self.helper(
            conf, database, 'setup', parties=count, scenarios=3, cap=cap)
        stats, _, _ = self.run_with_workers(conf, database)
        received = server.recipients
        deferred = [m for m in self.mails(stats)
            if m['state'] == 'waiting' and m['deferred'] == 'frequency']
        print('fault frequency_cap_workers: parties=%s received=%s '
            'most=%s deferred=%s' % (count, sum(received.values()),
                max(received.values()), len(deferred)),
            file=sys.stderr, flush=True)
        self.assertEqual(len(received), count)
        self.assertEqual(set(received.values()), {cap})
        self.assertEqual(len(deferred), 2 * count)


class MidDataServer:
    """A raw SMTP server that hangs up in the middle of the DATA of the
    messages whose rank is in drop, after a few of their bytes"""

    def __init__(self, drop):
        self.drop = drop
        self.messages = []
        self.faulted = set()
        self.count = 0
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(('127.0.0.1', 0))
        self.port = self._socket.getsockname()[1]
        self._thread = None

    def start(self):
        self._socket.listen(5)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._socket:
            self._socket.close()
            self._socket = None

    def _serve(self):
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            threading.Thread(
                target=self._session, args=(connection,), daemon=True).start()

    def _session(self, connection):
        reader = connection.makefile('rb')

        def answer(line):
            connection.sendall(line.encode() + b'\r\n')
        try:
            answer('220 localhost ESMTP')
            recipient = None
            while True:
                line = reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in {b'EHLO', b'HELO'}:
                    answer('250 localhost')
                elif verb in {b'MAIL', b'RCPT', b'RSET', b'NOOP'}:
                    if verb == b'RCPT':
                        recipient = parseaddr(
                            line[len(b'RCPT TO:'):].decode().strip())[1]
                    answer('250 OK')
                elif verb == b'QUIT':
                    answer('221 Bye')
                    return
                elif verb == b'DATA':
                    with self._lock:
                        self.count += 1
                        rank = self.count
                    answer('354 End data with <CR><LF>.<CR><LF>')
                    data = []
                    while True:
                        line = reader.readline()
                        if not line:
                            return
                        data.append(line)
                        if rank in self.drop and len(data) > 5:
                            # Hang up in the middle of the message
                            with self._lock:
                                self.faulted.add(recipient)
                            connection.shutdown(socket.SHUT_RDWR)
                            return
                        if line == b'.\r\n':
                            break
                    message = email.message_from_bytes(
                        b''.join(data[:-1]), policy=email.policy.default)
                    with self._lock:
                        self.messages.append(message)
                    answer('250 Queued')
                else:
                    answer('502 Not implemented')
        except OSError:
            return
        finally:
            reader.close()
            connection.close()

    @property
    def recipients(self):
        with self._lock:
            return Counter(
                parseaddr(str(m['To']))[1] for m in self.messages)
