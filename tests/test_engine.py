# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The engine: enrolment, execution and delivery by batches

The cost tests count the SQL statements sent to the database, never the
time: the number of statements must grow with the number of batches, not
with the number of records."""
import contextlib
import datetime as dt
import json
import os
import sys
import unittest
from email.utils import parseaddr

import trytond.config as config
from trytond import backend
from trytond.modules.marketing_automation.email_ import unsubscribe_url
from trytond.modules.marketing_automation.tests.tools import (
    BASE, SETTINGS, DatabaseTestCase, StatementCounter, create_parties,
    create_scenario, email_activity, record_activities_of, run_due, setting,
    smtp_server)
from trytond.pool import Pool
from trytond.pyson import Eval, Greater, PYSONEncoder
from trytond.tests.test_tryton import with_transaction
from trytond.tools import grouped_slice
from trytond.transaction import Transaction

MODULE = 'marketing_automation'


def report(line):
    "Print a measured figure for the reader of the test output"
    print('[marketing_automation] ' + line, file=sys.stderr, flush=True)


def last_record_id():
    "Return the last id drawn for an enrolled record, used or not"
    cursor = Transaction().connection.cursor()
    if backend.name == 'postgresql':
        cursor.execute('SELECT CASE WHEN is_called THEN last_value ELSE 0 END '
            'FROM marketing_automation_record_id_seq')
    else:
        cursor.execute('SELECT seq FROM sqlite_sequence '
            "WHERE name = 'marketing_automation_record'")
    return cursor.fetchone()[0]


class EngineTestCase(DatabaseTestCase):
    "Test the engine of marketing automation"

    settings = SETTINGS

    def setUp(self):
        super().setUp()
        self.counters = {}

    def batch_size(self, size):
        stack = contextlib.ExitStack()
        self.addCleanup(stack.close)
        stack.enter_context(setting(
                'marketing', 'automation_batch_size', str(size)))

    # Cost: statements grow with the batches, not with the records

    def measure_enrol(self, prefix, count):
        "Return the statements to enrol count new parties"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties(prefix, count)
        # Not due: executing later measures would not run them
        scenario = create_scenario(
            prefix, [email_activity(delay=dt.timedelta(days=1))])
        with StatementCounter() as counter:
            Scenario.trigger([scenario])
        self.counters[prefix] = counter
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), count)
        self.assertEqual(len(record_activities_of(
                    scenario, state='waiting')), count)
        return counter.count

    @with_transaction()
    def test_enrol_statements_by_batch(self):
        "Enrolment costs a constant number of statements per batch"
        self.batch_size(100)
        self.measure_enrol('EW', 5)  # warm the caches
        small = self.measure_enrol('ES', 300)
        big = self.measure_enrol('EB', 3000)
        per_batch = (big - small) / (3000 / 100 - 300 / 100)
        report('enrol by batches of 100: 300 records: %s statements, '
            '3000 records: %s statements, %.1f per batch'
            % (small, big, per_batch))
        # a select, the records and the root record activities
        self.assertLessEqual(
            per_batch, 4, msg=self.counters['EB'].summary())
        self.assertLessEqual(big, small + 4 * 27)

    def measure_execute(self, prefix, count, activities=None):
        "Return the statements to execute the root activities of count"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        create_parties(prefix, count)
        if activities is None:
            activities = [email_activity(children=[('create', [{
                                'name': "Opened",
                                'on': 'email_opened',
                                'action': None,
                                }])])]
        scenario = create_scenario(prefix, activities)
        Scenario.trigger([scenario])
        with StatementCounter() as counter:
            run_due()
        self.counters[prefix] = counter
        return scenario, counter.count

    @with_transaction()
    def test_execute_statements_by_batch(self):
        "Executing and composing costs a constant number per batch"
        pool = Pool()
        Email = pool.get('ir.email')
        self.batch_size(100)
        self.measure_execute('XW', 5)  # warm the caches
        _, small = self.measure_execute('XS', 200)
        scenario, big = self.measure_execute('XB', 2000)
        per_batch = (big - small) / (2000 / 100 - 200 / 100)
        report('execute by batches of 100: 200 record activities: %s '
            'statements, 2000: %s statements, %.1f per batch'
            % (small, big, per_batch))
        self.assertLessEqual(
            per_batch, 20, msg=self.counters['XB'].summary())

        root, = [a for a in scenario.activities]
        child, = root.children
        self.assertEqual(len(record_activities_of(
                    scenario, activity=root.id, state='done')), 2000)
        waiting = record_activities_of(
            scenario, activity=child.id, state='waiting')
        self.assertEqual(len(waiting), 2000)
        self.assertTrue(all(ra.at is None for ra in waiting))

        emails = Email.search([
                ('marketing_automation_activity', '=', root.id),
                ])
        self.assertEqual(len(emails), 2000)
        self.assertEqual(
            len({e.marketing_automation_record for e in emails}), 2000)
        self.assertEqual(len({e.message_id for e in emails}), 2000)
        an_email = emails[0]
        record = an_email.marketing_automation_record
        self.assertEqual(an_email.marketing_automation_status, 'pending')
        self.assertIn('<%s-' % 'XB', an_email.recipients)
        self.assertIn(record.record.name, an_email.subject)
        links = json.loads(an_email.marketing_automation_links)
        self.assertIn('https://shop.example.com/offer', links.values())
        self.assertIn('https://shop.example.com/bye', links.values())
        body = an_email.body
        self.assertNotIn('href="https://shop.example.com', body)
        self.assertNotIn('href="unsubscribe', body)
        self.assertIn('%s/m/' % BASE, body)
        self.assertIn(record.uuid, body)
        self.assertIn(an_email.marketing_automation_token, body)

    def measure_deliver(self, prefix, count):
        """Compose count emails and return the statements to deliver
        them and their Message-IDs"""
        pool = Pool()
        Email = pool.get('ir.email')
        scenario, _ = self.measure_execute(prefix, count)
        emails = Email.search([
                ('marketing_automation_record.scenario', '=', scenario.id),
                ])
        self.assertEqual(len(emails), count)
        message_ids = {e.message_id: (
                parseaddr(e.recipients)[1],
                unsubscribe_url(e.marketing_automation_record.uuid))
            for e in emails}
        with StatementCounter() as counter:
            Email.marketing_automation_deliver()
        Transaction().commit()
        self.counters[prefix + '-deliver'] = counter
        self.assertEqual(Email.search_count([
                    ('marketing_automation_record.scenario', '=',
                        scenario.id),
                    ('marketing_automation_status', '=', 'sent'),
                    ]), count)
        return scenario, message_ids, counter.count

    @with_transaction()
    def test_deliver_statements_per_email(self):
        "Delivery costs few statements per email and sends each once"
        pool = Pool()
        Email = pool.get('ir.email')
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        transaction = Transaction()
        self.batch_size(100)
        # Delivery commits after each email: remove what it committed
        self.addCleanup(self.clean_committed, ['DW', 'DS', 'DB', 'DP'])
        with smtp_server() as sink:
            self.measure_deliver('DW', 3)  # warm the caches
            sink.pop()
            _, small_ids, small = self.measure_deliver('DS', 20)
            received = list(zip(sink.envelopes, sink.pop()))
            scenario, big_ids, big = self.measure_deliver('DB', 200)
            received_big = list(zip(sink.envelopes, sink.pop()))

            # Nothing is left to send
            with StatementCounter() as again:
                Email.marketing_automation_deliver()
            transaction.commit()
            self.assertEqual(sink.messages, [])

            # The cron method executes and delivers
            create_parties('DP', 5)
            processed = create_scenario('DP', [email_activity()])
            Scenario.trigger([processed])
            RecordActivity.process()
            self.assertEqual(len(sink.messages), 5)
            self.assertEqual(
                {ra.state for ra in record_activities_of(processed)},
                {'done'})
            RecordActivity.process()
            self.assertEqual(len(sink.messages), 5)

        per_email = big / 200
        marginal = (big - small) / (200 - 20)
        report('deliver: 20 emails: %s statements, 200 emails: %s '
            'statements, %.2f per email, %.2f marginal; empty outbox: %s'
            % (small, big, per_email, marginal, again.count))
        self.assertLessEqual(
            per_email, 3, msg=self.counters['DB-deliver'].summary())
        self.assertLessEqual(
            marginal, 2, msg=self.counters['DB-deliver'].summary())
        self.assertLessEqual(again.count, 5)

        for messages, expected in [
                (received, small_ids), (received_big, big_ids)]:
            self.assertEqual(len(messages), len(expected))
            message_ids = [m['Message-ID'] for _, m in messages]
            self.assertEqual(len(set(message_ids)), len(message_ids))
            self.assertEqual(set(message_ids), set(expected))
            for (mail_from, rcpt_tos), message in messages:
                recipient, unsubscribe = expected[message['Message-ID']]
                # The activity's sender on behalf of the configured one
                self.assertEqual(message['From'], 'shop@example.com')
                self.assertEqual(message['Sender'], 'news@example.com')
                self.assertEqual(mail_from, 'news@example.com')
                self.assertEqual(rcpt_tos, [recipient])
                self.assertTrue(unsubscribe.startswith(BASE + '/m/'))
                # RFC 2369: the URL itself, folded maybe but not encoded
                self.assertEqual(
                    ''.join(message['List-Unsubscribe'].split()),
                    '<%s>' % unsubscribe)
        self.assertEqual(Scenario.search_count([('id', '=', scenario.id)]), 1)

    def clean_committed(self, prefixes):
        "Delete the data a committing test left"
        @with_transaction()
        def clean():
            pool = Pool()
            Email = pool.get('ir.email')
            Scenario = pool.get('marketing.automation.scenario')
            Activity = pool.get('marketing.automation.activity')
            Party = pool.get('party.party')
            ContactMechanism = pool.get('party.contact_mechanism')
            Record = pool.get('marketing.automation.record')
            email_table = Email.__table__()
            party = Party.__table__()
            mechanism = ContactMechanism.__table__()
            cursor = Transaction().connection.cursor()
            scenarios = Scenario.search([('name', 'in', prefixes)])
            activities, parents = [], list(scenarios)
            while parents:
                parents = [c for p in parents for c in (
                        p.activities if isinstance(p, Scenario)
                        else p.children)]
                activities.extend(parents)
            records = Record.search([('scenario', 'in', scenarios)])
            for sub_ids in grouped_slice(list(map(int, records)), 100):
                cursor.execute(*email_table.delete(
                        where=email_table.marketing_automation_record.in_(
                            list(sub_ids))))
            Scenario.delete(scenarios)
            Activity.delete(activities)
            for prefix in prefixes:
                parties = party.select(
                    party.id, where=party.code.like(prefix + '-%'))
                cursor.execute(*mechanism.delete(
                        where=mechanism.party.in_(parties)))
                cursor.execute(*party.delete(
                        where=party.code.like(prefix + '-%')))
            Transaction().commit()
        clean()

    @unittest.skipUnless(
        os.environ.get('MA_COUNT_BIG') == '1', "set MA_COUNT_BIG=1")
    @with_transaction()
    def test_count_big(self):
        "Measure the statements for 1,000 and 10,000 records"
        pool = Pool()
        Email = pool.get('ir.email')
        self.addCleanup(self.clean_committed,
            ['GW', 'G1', 'G2', 'G1E', 'G2E'])
        with smtp_server() as sink:
            self.measure_deliver('GW', 3)
            sink.pop()
            figures = {}
            for prefix, count in [('G1', 1000), ('G2', 10000)]:
                enrol = self.measure_enrol(prefix + 'E', count)
                scenario, execute = self.measure_execute(prefix, count)
                with StatementCounter() as deliver:
                    Email.marketing_automation_deliver()
                Transaction().commit()
                self.assertEqual(len(sink.messages), count)
                sink.pop()
                figures[count] = (enrol, execute, deliver.count)
        for count, (enrol, execute, deliver) in figures.items():
            report('batch size %s, %s records: enrol %s statements, '
                'execute %s statements, deliver %s statements'
                % (config.getint('marketing', 'automation_batch_size',
                        default=500), count, enrol, execute, deliver))

    # Behaviour

    @with_transaction()
    def test_trigger_enrols_once(self):
        "A record is never enrolled twice in a scenario"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('T', 7)
        scenario = create_scenario('T', [email_activity()])
        Scenario.trigger([scenario])
        Scenario.trigger([scenario])
        Scenario.trigger()
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 7)
        self.assertEqual(len(record_activities_of(scenario)), 7)

        # Only the new matching record is enrolled
        create_parties('T', 1, start=7)
        Scenario.trigger([scenario])
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 8)
        self.assertEqual(len(record_activities_of(scenario)), 8)

    @with_transaction()
    def test_trigger_nothing_new_draws_no_id(self):
        """A trigger run with nothing new to enrol draws no id: the hourly
        task would otherwise exhaust the ids of the records"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('TN', 5)
        scenario = create_scenario('TN', [email_activity()])
        Scenario.trigger([scenario])
        drawn = last_record_id()
        Scenario.trigger([scenario])
        Scenario.trigger([scenario])
        self.assertEqual(last_record_id(), drawn)

        create_parties('TN', 1, start=5)
        Scenario.trigger([scenario])
        self.assertEqual(last_record_id(), drawn + 1)
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 6)

    @with_transaction()
    def test_trigger_tokens(self):
        """The database makes the tokens of the records as new_token does:
        32 lowercase hexadecimal digits, each one new"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('TK', 50)
        scenario = create_scenario('TK', [email_activity()])
        Scenario.trigger([scenario])
        tokens = [r.uuid for r in Record.search(
                [('scenario', '=', scenario.id)])]
        self.assertEqual(len(tokens), 50)
        self.assertEqual(len(set(tokens)), 50)
        for token in tokens:
            self.assertRegex(token, r'^[0-9a-f]{32}$')
        # Not the version digit of a UUID everywhere
        self.assertGreater(len({t[12] for t in tokens}), 1)

    @with_transaction()
    def test_trigger_running_only(self):
        "Only running scenarios enrol"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('R', 3)
        scenario = create_scenario('R', [email_activity()], run=False)
        Scenario.trigger([scenario])
        Scenario.trigger()
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 0)

    @with_transaction()
    def test_unsubscribed_party_not_enrolled(self):
        "A party unsubscribed from the scenario is not enrolled"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        Party = pool.get('party.party')
        party_ids = create_parties('U', 4)
        scenario = create_scenario('U', [email_activity()])
        other = create_scenario('U', [email_activity()], name='U other')
        unsubscribed = Party(party_ids[1])
        Party.write([unsubscribed], {
                'marketing_scenario_unsubscribed': [('add', [scenario.id])],
                })
        Scenario.trigger([scenario, other])
        records = Record.search([('scenario', '=', scenario.id)])
        self.assertEqual(len(records), 3)
        self.assertNotIn(unsubscribed, [r.record for r in records])
        # The unsubscription is for this scenario only
        self.assertEqual(
            Record.search_count([('scenario', '=', other.id)]), 4)

    @with_transaction()
    def test_stopped_scenario_not_due(self):
        "The due record activities of a stopped scenario are not selected"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('P', 3)
        create_parties('Q', 2)
        stopped = create_scenario('P', [email_activity()])
        running = create_scenario('Q', [email_activity()])
        Scenario.trigger([stopped, running])
        Scenario.stop([stopped])

        due = {ra for batch in RecordActivity.due() for ra in batch}
        self.assertFalse(due & set(record_activities_of(stopped)))
        self.assertEqual(
            due & set(record_activities_of(running)),
            set(record_activities_of(running)))

        stopped_activities = record_activities_of(stopped)
        RecordActivity.run(stopped_activities)
        self.assertEqual(
            {ra.state for ra in record_activities_of(stopped)}, {'waiting'})

    @with_transaction()
    def test_blocked_record(self):
        "Blocking cancels the waiting record activities of the record"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        Party = pool.get('party.party')
        create_parties('K', 3)
        scenario = create_scenario(
            'K', [email_activity(), email_activity(
                    name="Later", delay=dt.timedelta(days=2))],
            unsubscribable=True)
        Scenario.trigger([scenario])
        blocked, *others = Record.search(
            [('scenario', '=', scenario.id)], order=[('id', 'ASC')])

        Record.block([blocked])
        Record.block([Record(blocked.id)])
        blocked = Record(blocked.id)

        self.assertTrue(blocked.blocked)
        self.assertEqual(
            {ra.state for ra in blocked.record_activities}, {'cancelled'})
        self.assertEqual(len(blocked.record_activities), 2)
        for record in others:
            self.assertFalse(record.blocked)
            self.assertEqual(
                {ra.state for ra in record.record_activities}, {'waiting'})
        self.assertEqual(
            Party(blocked.record.id).marketing_scenario_unsubscribed,
            (scenario,))

        due = {ra for batch in RecordActivity.due() for ra in batch}
        self.assertFalse(due & set(blocked.record_activities))

        # The party is unsubscribed: deleting its record does not enrol it
        # again
        Record.delete([blocked])
        Scenario.trigger([scenario])
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 2)

    @with_transaction()
    def test_party_without_email_fails_alone(self):
        "A party without email fails its record activity and no other"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Email = pool.get('ir.email')
        create_parties('M', 3)
        no_email, = create_parties('MN', 1, email=False)
        activity = email_activity(children=[('create', [{
                            'name': "Opened", 'on': 'email_opened',
                            }])])
        scenario = create_scenario('M', [activity], domain=PYSONEncoder(
                ).encode(['OR',
                    ('code', 'like', 'M-%'), ('code', 'like', 'MN-%')]))
        Scenario.trigger([scenario])
        root, = scenario.activities
        run_due()

        states = {ra.record.record.id: ra
            for ra in record_activities_of(scenario, activity=root.id)}
        self.assertEqual(len(states), 4)
        failed = states.pop(no_email)
        self.assertEqual(failed.state, 'failed')
        self.assertTrue(failed.error)
        self.assertIn('MN 0', failed.error)
        self.assertEqual({ra.state for ra in states.values()}, {'done'})
        self.assertTrue(all(not ra.error for ra in states.values()))

        emails = Email.search([
                ('marketing_automation_record.scenario', '=', scenario.id)])
        self.assertEqual(len(emails), 3)
        # Only the done record activities have children
        children = record_activities_of(
            scenario, activity=root.children[0].id)
        self.assertEqual(
            {ra.record.record.id for ra in children},
            set(states))

    @with_transaction()
    def test_condition_error_fails_alone(self):
        "A condition that fails for one record fails only that one"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Party = pool.get('party.party')
        parties = Party.create([
                {'name': name, 'code': 'C-%s' % i}
                for i, name in enumerate(['5', '7', '-3', 'x'])])
        condition = PYSONEncoder().encode(Greater(Eval('self.name', 0), 0))
        scenario = create_scenario('C', [{
                        'name': "Positive", 'condition': condition,
                        'children': [('create', [{'name': "Next"}])],
                        }])
        Scenario.trigger([scenario])
        root, = scenario.activities
        run_due()

        states = {ra.record.record.name: ra
            for ra in record_activities_of(scenario, activity=root.id)}
        self.assertEqual(len(states), len(parties))
        self.assertEqual(states['5'].state, 'done')
        self.assertEqual(states['7'].state, 'done')
        self.assertEqual(states['-3'].state, 'cancelled')
        self.assertEqual(states['x'].state, 'failed')
        self.assertTrue(states['x'].error)
        self.assertFalse(states['5'].error)

        children = record_activities_of(
            scenario, activity=root.children[0].id)
        self.assertEqual(
            sorted(ra.record.record.name for ra in children), ['5', '7'])

    @with_transaction()
    def test_click_without_open(self):
        "A click on an email not opened opens it too, once"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('O', 2)
        activity = email_activity(children=[('create', [{
                            'name': "Opened", 'on': 'email_opened',
                            'delay': dt.timedelta(hours=1),
                            }, {
                            'name': "Clicked", 'on': 'email_clicked',
                            }, {
                            'name': "Not opened", 'on': 'email_opened_not',
                            'delay': dt.timedelta(days=3),
                            }, {
                            'name': "Not clicked",
                            'on': 'email_clicked_not',
                            'delay': dt.timedelta(days=3),
                            }])])
        scenario = create_scenario('O', [activity])
        Scenario.trigger([scenario])
        root, = scenario.activities
        children = {c.name: c for c in root.children}
        run_due()

        clicked, other = record_activities_of(scenario, activity=root.id)
        self.assertEqual(clicked.state, 'done')
        self.assertFalse(clicked.email_opened)
        before = dt.datetime.now().replace(microsecond=0)
        RecordActivity.on_email_clicked([clicked])

        def snapshot():
            return sorted(
                (ra.record.id, ra.activity.name, ra.state, ra.at,
                    ra.email_opened, ra.email_clicked)
                for ra in record_activities_of(scenario))

        clicked = RecordActivity(clicked.id)
        self.assertTrue(clicked.email_opened)
        self.assertTrue(clicked.email_clicked)
        by_child = {ra.activity.name: ra
            for ra in record_activities_of(scenario)
            if ra.record == clicked.record and ra.activity != root}
        self.assertEqual(len(by_child), 4)
        self.assertEqual(by_child['Opened'].state, 'waiting')
        self.assertGreaterEqual(
            by_child['Opened'].at, before + dt.timedelta(hours=1))
        self.assertEqual(by_child['Clicked'].state, 'waiting')
        self.assertIsNotNone(by_child['Clicked'].at)
        self.assertLessEqual(by_child['Clicked'].at, dt.datetime.now())
        self.assertEqual(by_child['Not opened'].state, 'cancelled')
        self.assertEqual(by_child['Not clicked'].state, 'cancelled')

        # The other record is untouched
        other = RecordActivity(other.id)
        self.assertFalse(other.email_opened)
        self.assertFalse(other.email_clicked)
        for ra in record_activities_of(scenario):
            if ra.record == other.record and ra.activity != root:
                if children[ra.activity.name].negative:
                    self.assertIsNotNone(ra.at)
                else:
                    self.assertIsNone(ra.at)
                self.assertEqual(ra.state, 'waiting')

        # A second click, or an open, changes nothing
        first = snapshot()
        RecordActivity.on_email_clicked([RecordActivity(clicked.id)])
        RecordActivity.on_email_opened([RecordActivity(clicked.id)])
        self.assertEqual(snapshot(), first)
        self.assertEqual(len(record_activities_of(scenario)), 2 * 5)

        # The clicked child runs once when due and schedules nothing more
        run_due()
        self.assertEqual(
            RecordActivity(by_child['Clicked'].id).state, 'done')
        self.assertEqual(len(record_activities_of(scenario)), 2 * 5)
