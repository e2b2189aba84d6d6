# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Sending with workers: the cron queues the work as tasks that the
trytond-worker processes share, taken in any order and at the same time

The tasks are run here one at a time, in the orders that workers may take
them, each as trytond-worker runs it: ir.queue's run, then a commit. The
processes themselves, several at once on PostgreSQL, are in test_faults."""
import math
from collections import Counter

from trytond.modules.marketing_automation import outbox
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, SMTPServer, clear_outbox, create_parties,
    create_scenario, email_activity, setting, smtp_server)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

RUN = 'run'
DELIVER = 'marketing_automation_deliver'


class WorkersTestCase(DatabaseTestCase):
    "The work queued for the workers, by batches and by claims"
    settings = {
        **SETTINGS,
        ('queue', 'worker'): 'True',
        ('marketing', 'automation_batch_size'): '2',
        ('marketing', 'automation_claim_size'): '2',
        }

    def setUp(self):
        super().setUp()
        self.forget_others()

    @staticmethod
    @with_transaction()
    def forget_others():
        """Stop the scenarios, and drop the tasks and the unsent emails, of
        an earlier test: the database is shared by the tests"""
        pool = Pool()
        Queue = pool.get('ir.queue')
        Scenario = pool.get('marketing.automation.scenario')
        Scenario.stop(Scenario.search([('state', '=', 'running')]))
        Queue.delete(Queue.search([]))
        clear_outbox()

    def enrol(self, prefix, count):
        "Enrol count parties in a running scenario and return it"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        create_parties(prefix, count)
        scenario = create_scenario(prefix, [email_activity()])
        Scenario.trigger([scenario])
        Transaction().commit()
        return scenario

    def queued(self):
        "Return the tasks that no worker took yet, in the queue's order"
        Queue = Pool().get('ir.queue')
        return Queue.search(
            [('dequeued_at', '=', None)], order=[('id', 'ASC')])

    def run_tasks(self, order=list):
        """Run the queued tasks, those that they queue too, each committed,
        taking them in order(tasks) at each round; return the methods run"""
        methods = []
        while tasks := self.queued():
            for task in order(tasks):
                task.run()
                Transaction().commit()
                methods.append(task.data['method'])
        return methods

    def process(self):
        "Run the cron of the record activities and commit"
        RecordActivity = Pool().get('marketing.automation.record.activity')
        RecordActivity.process()
        Transaction().commit()

    def assertSentOnce(self, server, prefix, count):
        "Assert that each party got one email, and the outbox is empty"
        Email = Pool().get('ir.email')
        received = Counter(r for _, rs in server.envelopes for r in rs)
        self.assertEqual(received, Counter({
                    '%s-%06d@example.com' % (prefix, i): 1
                    for i in range(count)}))
        self.assertEqual(Email.search_count([
                    ('marketing_automation_status', 'in',
                        ['pending', 'sending']),
                    ]), 0)

    def states(self, scenario):
        RecordActivity = Pool().get('marketing.automation.record.activity')
        return Counter(ra.state for ra in RecordActivity.search([
                    ('record.scenario', '=', scenario.id)]))

    @with_transaction()
    def test_workers_batches_queued(self):
        "The cron queues one task per batch and runs nothing itself"
        pool = Pool()
        Email = pool.get('ir.email')
        RecordActivity = pool.get('marketing.automation.record.activity')
        scenario = self.enrol('WB', 5)
        with smtp_server() as server:
            self.process()
        tasks = self.queued()
        self.assertEqual([t.data['method'] for t in tasks], [RUN] * 3)
        batches = [t.data['instances'] for t in tasks]
        self.assertEqual(sorted(i for b in batches for i in b),
            sorted(ra.id for ra in RecordActivity.search([
                        ('record.scenario', '=', scenario.id)])))
        self.assertEqual(self.states(scenario), {'waiting': 5})
        self.assertEqual(Email.search_count([
                    ('marketing_automation_record.scenario', '=',
                        scenario.id)]), 0)
        self.assertEqual(server.envelopes, [])

    @with_transaction()
    def test_workers_delivery_shared(self):
        "A batch that a worker ran is delivered by one task for each claim"
        scenario = self.enrol('WS', 4)
        with smtp_server() as server, \
                setting('marketing', 'automation_batch_size', '4'), \
                setting('marketing', 'automation_claim_size', '1'):
            self.process()
            run, = self.queued()
            run.run()
            Transaction().commit()
            deliveries = self.queued()
            self.assertEqual(
                [t.data['method'] for t in deliveries], [DELIVER] * 4)
            # Each one alone would send them all: the first to run does
            self.run_tasks()
        self.assertEqual(self.states(scenario), {'done': 4})
        self.assertSentOnce(server, 'WS', 4)

    @with_transaction()
    def test_workers_any_order(self):
        "Taken last queued first, deliveries before runs, each sent once"
        scenario = self.enrol('WO', 5)
        with smtp_server() as server:
            self.process()
            methods = self.run_tasks(order=lambda t: t[::-1])
        self.assertEqual(Counter(methods)[RUN], 3)
        self.assertGreaterEqual(Counter(methods)[DELIVER], 3)
        self.assertEqual(self.states(scenario), {'done': 5})
        self.assertSentOnce(server, 'WO', 5)

    @with_transaction()
    def test_workers_queued_twice(self):
        "Two crons before any worker queue each batch twice: sent once"
        pool = Pool()
        Email = pool.get('ir.email')
        scenario = self.enrol('WT', 5)
        with smtp_server() as server:
            self.process()
            self.process()
            self.assertEqual(
                [t.data['method'] for t in self.queued()], [RUN] * 6)
            self.run_tasks()
        self.assertEqual(self.states(scenario), {'done': 5})
        self.assertEqual(Email.search_count([
                    ('marketing_automation_record.scenario', '=',
                        scenario.id)]), 5)
        self.assertSentOnce(server, 'WT', 5)

    @with_transaction()
    def test_workers_claimed_meanwhile(self):
        """A delivery that claimed emails while another task delivers the
        rest: each sends its own, each email once"""
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        self.enrol('WC', 5)
        for record_activities in RecordActivity.due():
            RecordActivity.run(record_activities)
        Transaction().commit()
        with smtp_server() as server:
            token = outbox.claim()
            first = outbox.claimed(token)
            self.assertEqual(len(first), 2)
            # Another worker's task takes the others
            Pool().get('ir.email').marketing_automation_deliver()
            self.assertEqual(len(server.envelopes), 3)
            sent, _ = outbox.send(first)
        self.assertEqual(sent, 2)
        self.assertSentOnce(server, 'WC', 5)

    @with_transaction()
    def test_workers_backlog_shared(self):
        """The emails left unsent while the server was down are queued as
        several delivery tasks, at most DELIVERY_TASKS with those waiting,
        and sent once"""
        pool = Pool()
        Email = pool.get('ir.email')
        table = Email.__table__()
        cursor = Transaction().connection.cursor()
        scenario = self.enrol('WD', 7)
        down = SMTPServer()
        try:
            with setting('email', 'uri', down.uri):
                self.process()
                self.run_tasks()
        finally:
            down.stop()
        self.assertEqual(self.states(scenario), {'done': 7})
        self.assertEqual(Email.search_count([
                    ('marketing_automation_status', '=', 'pending'),
                    ('marketing_automation_attempts', '=', 1),
                    ]), 7)
        # The retry delay is over
        cursor.execute(*table.update(
                [table.marketing_automation_next_try], [None],
                where=table.marketing_automation_status == 'pending'))
        Transaction().commit()
        with smtp_server() as server:
            self.process()
            self.assertEqual([t.data['method'] for t in self.queued()],
                [DELIVER] * min(math.ceil(7 / 2), outbox.DELIVERY_TASKS))
            # Those waiting for a worker are enough
            self.process()
            self.assertEqual(len(self.queued()),
                min(math.ceil(7 / 2), outbox.DELIVERY_TASKS))
            self.run_tasks()
        self.assertSentOnce(server, 'WD', 7)

    @with_transaction()
    def test_workers_stopped(self):
        "A scenario stopped after the cron queued its batches sends nothing"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        scenario = self.enrol('WP', 3)
        with smtp_server() as server:
            self.process()
            Scenario.stop([scenario])
            Transaction().commit()
            self.run_tasks()
        self.assertEqual(self.states(scenario), {'waiting': 3})
        self.assertEqual(server.envelopes, [])
