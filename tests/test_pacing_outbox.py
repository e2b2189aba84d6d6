# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Pacing of the outbox: the SMTP timeout, the send rate of the database,
the messages per connection and the back-off when the server asks for it

The servers are real, on the loopback: a socket that never greets, an
aiosmtpd server that goes silent in the DATA of a message or answers 421
and 454. Only the rate test measures time, over trytond-worker and
trytond-cron processes, as the rate is what it checks."""
import asyncio
import socket
import sys
import threading
import time
import unittest
from collections import Counter

from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

from .test_engine import SETTINGS, create_scenario, email_activity
from .test_faults import BACKEND, FaultTestCase, FaultySMTPServer
from .tools import (
    DatabaseTestCase, SMTPServer, _Handler, create_parties, setting,
    smtp_server)

# Longer than the timeout of the tests: the client hangs up first
STALL = 5


class _StallingHandler(_Handler):
    "Go silent after the DATA of the messages to stall, then hang up"

    async def handle_DATA(self, server, session, envelope):
        if self.server.stalls(envelope.rcpt_tos[0]):
            await asyncio.sleep(STALL)
            server.transport.close()
            return '421 Closing'
        return await super().handle_DATA(server, session, envelope)


class StallingServer(SMTPServer):
    "A mail server that never answers the first DATA of some recipients"
    handler_class = _StallingHandler

    def __init__(self, recipients):
        super().__init__()
        self.recipients = set(recipients)
        self.stalled = []

    def stalls(self, recipient):
        with self._lock:
            if recipient in self.recipients:
                self.recipients.discard(recipient)
                self.stalled.append(recipient)
                return True
        return False


class _CountingHandler(_Handler):
    "Keep the client address of each message: one per connection"

    async def handle_DATA(self, server, session, envelope):
        with self.server._lock:
            self.server.peers.append(session.peer)
        return await super().handle_DATA(server, session, envelope)


class ThrottlingServer(SMTPServer):
    """A mail server that asks to slow down, once for each recipient of
    rcpt (at RCPT) and data (at DATA), with the answer given"""
    handler_class = _CountingHandler

    def __init__(self, rcpt=None, data=None):
        super().__init__()
        self.rcpt, self.data = dict(rcpt or {}), dict(data or {})
        self.peers = []

    def answer_rcpt(self, address):
        with self._lock:
            return self.rcpt.pop(address, None)

    def answer_data(self, sender, recipients, content):
        with self._lock:
            return self.data.pop(recipients[0], None)


class SilentServer:
    "A socket that takes connections and never says a word"

    def __init__(self):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(('127.0.0.1', 0))
        self.socket.listen(16)
        self.uri = 'smtp://127.0.0.1:%s' % self.socket.getsockname()[1]

    def __enter__(self):
        return self

    def start(self):
        return self

    def stop(self):
        self.socket.close()

    def __exit__(self, *args):
        self.stop()


def outbox(prefix):
    """Return the emails to the parties coded prefix-*, by address in the
    order of the outbox"""
    Email = Pool().get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.select(
            table.recipients, table.marketing_automation_status,
            table.marketing_automation_attempts,
            table.marketing_automation_error,
            table.marketing_automation_claim,
            table.marketing_automation_next_try,
            where=table.recipients.like('%' + prefix + '-%'),
            order_by=[table.id.asc]))
    return {r[0].split('<')[-1].rstrip('>'): r[1:] for r in cursor}


def make_due():
    Email = Pool().get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.update(
            [table.marketing_automation_next_try], [None],
            where=table.marketing_automation_status == 'pending'))


def deliver(server):
    Email = Pool().get('ir.email')
    with smtp_server(server):
        Email.marketing_automation_deliver()


def received(server):
    return Counter(r for _, rs in server.envelopes for r in rs)


class PacingOutboxTestCase(DatabaseTestCase):
    "The SMTP timeout, the messages per connection and the back-off"
    settings = {
        **SETTINGS,
        ('marketing', 'automation_smtp_timeout'): '1',
        }

    def setUp(self):
        super().setUp()
        self.reset_pace()

    @staticmethod
    @with_transaction()
    def reset_pace():
        "Forget the back-off and the unsent emails of an earlier test"
        from ..pacing import TABLE
        Email = Pool().get('ir.email')
        table = Email.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute('UPDATE "%s" SET next_send = 0, backoff = 0, '
            'backoff_until = 0' % TABLE)
        cursor.execute(*table.update(
                [table.marketing_automation_status], ['failed'],
                where=table.marketing_automation_status.in_(
                    ['pending', 'sending'])))
        Transaction().commit()

    def enrol(self, prefix, count):
        "Enrol count parties and compose their emails, unsent"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties(prefix, count)
        scenario = create_scenario(prefix, [email_activity()])
        Scenario.trigger([scenario])
        for record_activities in RecordActivity.due():
            RecordActivity.run(record_activities)
        Transaction().commit()
        return ['%s-%06d@example.com' % (prefix, i) for i in range(count)]

    @with_transaction()
    def test_pacing_smtp_uri_timeout(self):
        "The timeout of [email] uri wins over the module's default"
        from ..pacing import smtp_uri
        with setting('email', 'uri', 'smtp://u:p%40ss@mail:25?timeout=7'):
            self.assertEqual(
                smtp_uri(), 'smtp://u:p%40ss@mail:25?timeout=7')
        with setting('email', 'uri', 'smtp+tls://mail:587'):
            self.assertEqual(smtp_uri(), 'smtp+tls://mail:587?timeout=1')
        with setting('email', 'uri', 'smtp://mail?local_hostname=me'), \
                setting('marketing', 'automation_smtp_timeout', '12'):
            self.assertEqual(
                smtp_uri(), 'smtp://mail?local_hostname=me&timeout=12')

    @with_transaction()
    def test_pacing_timeout_no_greeting(self):
        "A server that never greets: the run returns, all stay pending"
        addresses = self.enrol('TG', 3)
        with SilentServer() as silent:
            deliver(silent)
        emails = outbox('TG')
        self.assertEqual(set(emails), set(addresses))
        for status, attempts, error, claim, _ in emails.values():
            self.assertEqual((status, attempts, claim), ('pending', 1, None))
            self.assertIn('timed out', error)

        make_due()
        server = SMTPServer()
        deliver(server)
        self.assertEqual(received(server), Counter(addresses))
        self.assertEqual(
            {e[0] for e in outbox('TG').values()}, {'sent'})

    @with_transaction()
    def test_pacing_timeout_mid_data(self):
        """A server silent in the DATA of a message: it is retried, the
        rest of the claim is released at once and each goes once"""
        self.enrol('TD', 5)
        addresses = list(outbox('TD'))
        stalling = StallingServer([addresses[1]])
        deliver(stalling)
        self.assertEqual(stalling.stalled, [addresses[1]])
        self.assertEqual(received(stalling), Counter(addresses[:1]))
        emails = outbox('TD')
        status, attempts, error, claim, _ = emails[addresses[1]]
        self.assertEqual((status, attempts, claim), ('pending', 1, None))
        self.assertIn('timed out', error)
        for address in addresses[2:]:
            self.assertEqual(emails[address][:4], ('pending', 0, None, None))

        # The released ones go at once, the timed out one at its next try
        server = SMTPServer()
        deliver(server)
        self.assertEqual(received(server), Counter(addresses[2:]))
        make_due()
        deliver(server)
        self.assertEqual(
            received(stalling) + received(server), Counter(addresses))
        self.assertEqual(
            {e[0] for e in outbox('TD').values()}, {'sent'})

    @with_transaction()
    def test_pacing_throttled(self):
        """421 and 454 slow every sender down: the email goes back to the
        outbox and is sent, nothing fails, no address counts a refusal"""
        from ..pacing import TABLE
        pool = Pool()
        ContactMechanism = pool.get('party.contact_mechanism')
        addresses = self.enrol('TT', 6)
        server = ThrottlingServer(
            rcpt={addresses[3]: '421 4.7.0 Too many connections'},
            data={addresses[1]: '454 4.7.0 Slow down'})
        deliver(server)
        self.assertEqual(server.rcpt, {})
        self.assertEqual(server.data, {})
        self.assertEqual(received(server), Counter(addresses))
        for status, attempts, _, _, _ in outbox('TT').values():
            self.assertEqual((status, attempts), ('sent', 1))
        mechanisms = ContactMechanism.search(
            [('value', 'like', 'TT-%')])
        self.assertEqual(
            {m.marketing_soft_bounces or 0 for m in mechanisms}, {0})
        cursor = Transaction().connection.cursor()
        cursor.execute('SELECT backoff, backoff_until FROM "%s"' % TABLE)
        backoff, until = cursor.fetchone()
        # Doubled twice from the shortest back-off, for a while
        self.assertAlmostEqual(backoff, 0.2)
        self.assertGreater(until, time.time())

    @with_transaction()
    def test_pacing_messages_per_connection(self):
        "A new connection after automation_messages_per_connection"
        addresses = self.enrol('TC', 7)
        server = ThrottlingServer()
        with setting('marketing', 'automation_messages_per_connection', '3'):
            deliver(server)
        self.assertEqual(received(server), Counter(addresses))
        self.assertEqual(
            sorted(Counter(server.peers).values()), [1, 3, 3])


class TimedServer(FaultySMTPServer):
    "Keep the time each message arrives"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.times = []

    def receive(self, sender, recipients, content):
        super().receive(sender, recipients, content)
        with self._lock:
            self.times.append(time.monotonic())


class PacingRateTestCase(FaultTestCase):
    "The send rate holds for all the processes of the database together"

    @unittest.skipIf(BACKEND != 'postgresql',
        "concurrent workers need PostgreSQL: SQLite has one writer and no "
        "SELECT ... FOR UPDATE SKIP LOCKED")
    def test_pacing_rate_workers(self):
        "Two trytond-worker and trytond-cron keep to the rate together"
        count, rate = 200, 20
        server = self.track(TimedServer().start())
        database = self._database()
        conf = self._write_conf(database, server.port, worker=True,
            automation_rate=rate, automation_batch_size=50,
            automation_claim_size=25)
        self.helper(conf, database, 'setup', parties=count)
        self.helper(conf, database, 'cron-due')
        workers = [self._spawn_trytond(
                    'trytond-worker', conf, database, '-n', '1')
            for _ in range(2)]
        cron, _ = self._spawn_trytond('trytond-cron', conf, database, '-1')
        deadline = time.monotonic() + count / rate + 120
        while (len(server.times) < count and time.monotonic() < deadline
                and all(p.poll() is None for p, _ in workers)):
            threading.Event().wait(0.5)
        cron.wait(60)
        stats = self.helper(conf, database, 'stats')
        times = sorted(server.times)
        measured = (len(times) - 1) / (times[-1] - times[0])
        print('pacing rate: limit=%s/s measured=%.2f/s over %s emails in '
            '%.1f s' % (rate, measured, len(times), times[-1] - times[0]),
            file=sys.stderr, flush=True)
        self.assertEqual(len(self.outbox(stats, 'sent')), count)
        delivered, _, _ = self.figures('pacing_rate', stats, server)
        self.assertEqual(len(delivered), count)
        self.assertLess(abs(measured - rate), rate * 0.1)

    def track(self, server):
        self.addCleanup(server.stop)
        return server
