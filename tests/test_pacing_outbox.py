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

from aiosmtpd.smtp import SMTP
from sql import Column, Table

from trytond.modules.marketing_automation.tests.test_faults import (
    BACKEND, FaultTestCase, FaultySMTPServer)
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, SMTPServer, _Controller, _Handler,
    clear_outbox, create_parties, create_scenario, email_activity, setting,
    smtp_server)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

# Longer than the timeout of the tests: the client hangs up first
STALL = 5
PACING = 'trytond.modules.marketing_automation.pacing'


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


def retry_now():
    "Make the pending emails due for their next try now"
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
        Pace = Pool().get('marketing.automation.pacing')
        pace = Pace.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*pace.update(
                [pace.next_send, pace.backoff, pace.backoff_until],
                [0, 0, 0]))
        clear_outbox()

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
        from trytond.modules.marketing_automation.pacing import smtp_uri
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

        retry_now()
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
        retry_now()
        deliver(server)
        self.assertEqual(
            received(stalling) + received(server), Counter(addresses))
        self.assertEqual(
            {e[0] for e in outbox('TD').values()}, {'sent'})

    @with_transaction()
    def test_pacing_throttled(self):
        """421 and 454 slow every sender down: the email goes back to the
        outbox and is sent, nothing fails, no address counts a refusal;
        once the server accepts again the back-off ends"""
        pool = Pool()
        ContactMechanism = pool.get('party.contact_mechanism')
        Pace = pool.get('marketing.automation.pacing')
        addresses = self.enrol('TT', 6)
        server = ThrottlingServer(
            rcpt={addresses[3]: '421 4.7.0 Too many connections'},
            data={addresses[1]: '454 4.7.0 Slow down'})
        with self.assertLogs(PACING, 'WARNING') as logs:
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
        # Each refusal came after an accepted email: slowed down from the
        # rate to the shortest back-off, each time
        self.assertEqual(
            [r.getMessage() for r in logs.records], [
                'the SMTP server asks to slow down: 0.100 s between emails',
                ] * 2)
        pace, = Pace.search([])
        self.assertLessEqual(pace.backoff_until, time.time())

    @with_transaction()
    def test_pacing_backoff_holds(self):
        """While the server keeps refusing, the back-off doubles up to its
        longest spacing and holds; a claim reserves one email at a time"""
        from trytond.modules.marketing_automation import pacing
        with setting('marketing', 'automation_rate', '10'):
            slots = pacing.reserve(5)
            self.assertEqual((len(slots), slots.step), (5, 0.1))
            steps = []
            go_on = True
            while go_on:
                go_on = pacing.slow_down(slots.step)
                slots = pacing.reserve(5)
                self.assertEqual(len(slots), 1)
                steps.append(slots.step)
            self.assertEqual(
                steps, [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, pacing.MAX_BACKOFF])
            # The refusal of an email sent faster before: the same slowing
            self.assertFalse(pacing.slow_down(0.1))
            later = pacing.reserve(5)
            self.assertEqual(
                (len(later), later.step), (1, pacing.MAX_BACKOFF))
            self.assertAlmostEqual(later.start, slots.end)

    @with_transaction()
    def test_pacing_backoff_recovers(self):
        """Each email that the server accepts during a back-off halves it
        and shortens the time reserved after it; below the shortest
        back-off, the claims are reserved whole at the rate again"""
        from trytond.modules.marketing_automation import pacing
        step = 0.
        for _ in range(3):
            pacing.slow_down(step)
            step = pacing.reserve(1).step
        steps = []
        slots = pacing.reserve(4)
        while len(slots) == 1:
            steps.append(slots.step)
            pacing.accepted(slots, 0)
            following = pacing.reserve(4)
            self.assertAlmostEqual(
                following.start, slots.start + following.step
                if len(following) == 1 else slots.start)
            slots = following
        self.assertEqual(steps, [0.4, 0.2, 0.1])
        self.assertEqual((len(slots), slots.step), (4, 0.))

    @with_transaction()
    def test_pacing_give_back(self):
        """The send times of emails that go back to the outbox unsent are
        given back, unless another sender reserved after them"""
        from trytond.modules.marketing_automation import pacing
        with setting('marketing', 'automation_rate', '10'):
            first = pacing.reserve(10)
            pacing.give_back(first, 4)
            second = pacing.reserve(2)
            self.assertAlmostEqual(second.start, first[4])
            third = pacing.reserve(1)
            pacing.give_back(second, 0)
            fourth = pacing.reserve(1)
            self.assertAlmostEqual(fourth.start, third.end)

    @with_transaction()
    def test_pacing_tables_taken_over(self):
        """The pace row and the cap rows of the tables made by hand before
        they were models are kept in the tables of the models"""
        pool = Pool()
        IrModel = pool.get('ir.model')
        Pace = pool.get('marketing.automation.pacing')
        PartyCap = pool.get('marketing.automation.party.cap')
        party_id, = create_parties('TO', 1)
        ir_model = IrModel.__table__()
        cursor = Transaction().connection.cursor()
        # As an earlier version left them: tables of no model
        for Model, columns, row in [
                (Pace, [('id', 'INTEGER PRIMARY KEY'),
                        ('next_send', 'DOUBLE PRECISION NOT NULL'),
                        ('backoff', 'DOUBLE PRECISION NOT NULL'),
                        ('backoff_until', 'DOUBLE PRECISION NOT NULL')],
                    [1, 5.0, 0.5, 7.0]),
                (PartyCap, [('party', 'INTEGER PRIMARY KEY')], [party_id]),
                ]:
            table = Table(Model._table)
            cursor.execute('DROP TABLE "%s"' % Model._table)
            cursor.execute('CREATE TABLE "%s" (%s)' % (
                    Model._table, ', '.join('%s %s' % c for c in columns)))
            cursor.execute(*table.insert(
                    [Column(table, n) for n, _ in columns], [row]))
            cursor.execute(*ir_model.delete(
                    where=ir_model.name == Model.__name__))
            Model.__register__('marketing_automation')

        pace, = Pace.search([])
        self.assertEqual(
            (pace.id, pace.next_send, pace.backoff, pace.backoff_until),
            (1, 5.0, 0.5, 7.0))
        cap, = PartyCap.search([])
        self.assertEqual(cap.party.id, party_id)
        self.assertTrue(IrModel.search([('name', '=', Pace.__name__)]))

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

    @with_transaction()
    def test_pacing_one_connection_for_claims(self):
        "A delivery run keeps its connection from one claim to the next"
        addresses = self.enrol('TK', 5)
        server = ThrottlingServer()
        with setting('marketing', 'automation_claim_size', '2'):
            deliver(server)
        self.assertEqual(received(server), Counter(addresses))
        self.assertEqual(list(Counter(server.peers).values()), [5])

    @with_transaction()
    def test_pacing_dead_claim_settled(self):
        """What a run that died had sent is marked sent by the next run,
        not sent again; the rest of its claim is"""
        from trytond.modules.marketing_automation import outbox
        pool = Pool()
        Email = pool.get('ir.email')
        Sent = pool.get('marketing.automation.email.sent')
        addresses = self.enrol('TS', 3)
        token = outbox.claim()
        (first, _, _), *_ = outbox.claimed(token)
        # The run died once the server had accepted the first email
        outbox._sent(first)
        Transaction().commit()
        server = ThrottlingServer()
        with setting('marketing', 'automation_claim_timeout', '0'):
            deliver(server)
        self.assertEqual(received(server), Counter(addresses[1:]))
        emails = Email.search([
                ('marketing_automation_status', '!=', None),
                ('recipients', 'like', '%TS-%'),
                ])
        self.assertEqual(
            {e.marketing_automation_status for e in emails}, {'sent'})
        dead, = [e for e in emails if e.id == first]
        self.assertEqual(dead.marketing_automation_attempts, 1)
        self.assertIsNotNone(dead.marketing_automation_sent_at)
        self.assertFalse(Sent.search([]))


class TimedServer(FaultySMTPServer):
    "Keep the time each message arrives"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.times = []

    def receive(self, sender, recipients, content):
        super().receive(sender, recipients, content)
        with self._lock:
            self.times.append(time.monotonic())


class _GreetingSMTP(SMTP):
    "Greet with the answer of the server, and hang up when it is not 220"

    async def push(self, status):
        if status.startswith('220 ') and not getattr(self, 'greeted', False):
            self.greeted = True
            answer = self.event_handler.server.greeting()
            if answer:
                await super().push(answer)
                self.transport.close()
                return
        await super().push(status)


class _GreetingController(_Controller):

    def factory(self):
        return _GreetingSMTP(self.handler, **self.SMTP_kwargs)


class BusyServer(TimedServer):
    """A mail server that greets with 421 for seconds from the first
    connection of a client, then recovers; recovered is when, in
    time.monotonic()"""

    def __init__(self, seconds, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds
        self.recovered = None
        self.refused = []

    def greeting(self):
        with self._lock:
            now = time.monotonic()
            if self.recovered is None:
                self.recovered = now + self.seconds
            busy = now < self.recovered
            if busy:
                self.refused.append(now)
        if busy:
            return '421 4.7.0 Too many connections, try again later'

    def start(self):
        # SMTPServer.start with a controller that greets as told
        if self._controller is None:
            if self._socket is None:
                self._socket = self._bind(self.port)
            controller = _GreetingController(
                self.handler_class(self), self._socket)
            self._socket = None
            controller.start()
            self._controller = controller
            # The controller connects once to check that it serves
            with self._lock:
                self.recovered, self.refused = None, []
        return self


class PacingFaultTestCase(FaultTestCase):
    """The send rate holds for all the processes of the database together,
    and the backlog of a server that asked to slow down goes out at the
    normal pace soon after it accepts again"""
    # The most seconds the backlog may take once the server accepts again
    DRAIN = 60

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

    def drain(self, name, server, count, since, rate=10):
        """Run the processing as trytond-cron would, again and again, until
        the server got the count emails; print and check the seconds they
        took from since, a time.monotonic() or a callable returning it"""
        database = self._database()
        conf = self._write_conf(database, server.port, automation_rate=rate)
        self.helper(conf, database, 'setup', parties=count)
        deadline = time.monotonic() + 600
        runs = 0
        while len(server.times) < count and time.monotonic() < deadline:
            self.helper(conf, database, 'process')
            runs += 1
        stats = self.helper(conf, database, 'stats')
        start = since() if callable(since) else since
        drain = max(server.times) - start
        print('pacing %s: %s emails out %.1f s after the server accepts '
            'again, in %s runs' % (name, len(server.times), drain, runs),
            file=sys.stderr, flush=True)
        delivered, failed, _ = self.figures(name, stats, server)
        self.assertEqual(len(delivered), count)
        self.assertEqual(failed, set())
        # Asking to slow down counts no attempt
        self.assertEqual(
            {e['attempts'] for e in self.outbox(stats)}, {1})
        self.assertLess(drain, self.DRAIN)
        return stats

    # The back-off is the same on every backend, and the pace row under
    # concurrent workers on PostgreSQL is test_pacing_rate_workers': one
    # backend proves it, not the PostgreSQL run, the longer one
    @unittest.skipIf(BACKEND == 'postgresql',
        "the SMTP back-off is the same on every backend: run on SQLite")
    def test_pacing_fault_busy_greeting(self):
        """A server greets with 421 for a while, then recovers: the
        backlog goes out at the normal pace within a minute"""
        # Long enough for the back-off to reach its ceiling, MAX_BACKOFF
        server = self.track(BusyServer(25).start())
        self.drain('busy_greeting', server, 30, lambda: server.recovered)
        print('pacing busy_greeting: 421 at %s s' % ', '.join(
                '%.1f' % (t - server.refused[0]) for t in server.refused),
            file=sys.stderr, flush=True)
        self.assertGreater(len(server.refused), 1)

    def test_pacing_fault_454_every_other(self):
        """A server answers 454 to every other message: the back-off does
        not grow with each refusal, the emails go out within a minute"""
        start = []

        def data(to, total):
            if not start:
                start.append(time.monotonic())
            if total % 2:
                return '454 4.7.0 Slow down'

        server = self.track(TimedServer(data=data).start())
        self.drain('454_every_other', server, 30, lambda: start[0])
        self.assertEqual(len(server.faulted), 30)
