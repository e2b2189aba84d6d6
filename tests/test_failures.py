# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Retrying failures where the tree had moved on, who may retry, and the
activities added to a scenario that has records"""
import datetime as dt

from trytond.exceptions import UserError
from trytond.model.exceptions import AccessError
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, SMTPServer, create_parties, create_scenario,
    create_user, email_activity, make_due, record_activities_of, run_due,
    smtp_server)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction


class Refusing(SMTPServer):
    "A mail server that refuses for good the messages to some addresses"

    def __init__(self, addresses):
        super().__init__()
        self.addresses = set(addresses)

    def answer_data(self, sender, recipients, content):
        if self.addresses & set(recipients):
            return '554 5.7.1 Refused'


def tree_with_children():
    "An email with a child on its open and a reminder a day later"
    return email_activity(children=[('create', [
                    {'name': "Opened", 'on': 'email_opened'},
                    {'name': "Reminder", 'delay': dt.timedelta(days=1)},
                    ])])


class FailuresTestCase(DatabaseTestCase):
    "Retry and the activities added later"
    settings = SETTINGS

    def process(self, server=None):
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        with smtp_server(server) as sink:
            RecordActivity.process()
        return sink

    @with_transaction()
    def test_retry_after_delivery_failure(self):
        """An email refused by the server fails after its record activity
        ran and scheduled its children: retried, it is sent again and its
        children come again, once"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        ContactMechanism = pool.get('party.contact_mechanism')
        create_parties('RD', 2)
        scenario = create_scenario('RD', [tree_with_children()])
        root, = scenario.activities
        Scenario.trigger([scenario])
        self.process(Refusing({'RD-000000@example.com'}))

        failed, = record_activities_of(
            scenario, activity=root.id, state='failed')
        self.assertEqual(failed.record.record.code, 'RD-000000')
        self.assertEqual(failed.email_status, 'failed')
        # The failure cancelled its children, which never ran
        self.assertEqual(
            {ra.state for ra in record_activities_of(scenario)
                if ra.record == failed.record and ra != failed},
            {'cancelled'})

        mechanism, = ContactMechanism.search(
            [('value', '=', 'RD-000000@example.com')])
        mechanism.value = 'rd-0@example.org'
        mechanism.save()
        RecordActivity.retry([failed])
        failed = RecordActivity(failed.id)
        self.assertEqual((failed.state, failed.error), ('waiting', None))
        sink = self.process()

        self.assertEqual(
            [rs for _, rs in sink.envelopes], [['rd-0@example.org']])
        retried = RecordActivity(failed.id)
        self.assertEqual(retried.state, 'done')
        # The status of the new email, not of the refused one
        self.assertEqual(retried.email_status, 'sent')
        children = {ra.activity.name: ra.state
            for ra in record_activities_of(scenario)
            if ra.record == retried.record and ra != retried}
        self.assertEqual(
            children, {'Opened': 'waiting', 'Reminder': 'waiting'})

    @with_transaction()
    def test_retry_refused_once_moved_on(self):
        """A failure whose record went on with the children, as when a
        delivery report comes after them, is not retried"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('RM', 1)
        scenario = create_scenario('RM', [tree_with_children()])
        root, = scenario.activities
        Scenario.trigger([scenario])
        run_due()
        sent, = record_activities_of(scenario, activity=root.id)
        reminder, = [ra for ra in record_activities_of(scenario)
            if ra.activity.name == "Reminder"]
        make_due([reminder])
        run_due()
        self.assertEqual(RecordActivity(reminder.id).state, 'done')
        RecordActivity.fail([sent], "Bounced: no such user")

        with self.assertRaisesRegex(UserError, 'None of the 1'):
            RecordActivity.retry([RecordActivity(sent.id)])
        self.assertEqual(RecordActivity(sent.id).state, 'failed')

    @with_transaction()
    def test_retry_rights(self):
        """The marketing group presses Retry and Retry Failed but writes no
        record activity; others may not press them"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('RR', 2, email=False)
        scenario = create_scenario('RR', [email_activity()])
        root, = scenario.activities
        Scenario.trigger([scenario])
        run_due()
        first, second = record_activities_of(scenario, state='failed')
        marketer = create_user('rr_marketer', ['marketing.group_marketing'])
        clerk = create_user('rr_clerk', ['party.group_party_admin'])
        transaction = Transaction()

        with transaction.set_user(clerk.id), \
                transaction.set_context(_check_access=True):
            with self.assertRaises(AccessError):
                RecordActivity.retry([first])
            with self.assertRaises(AccessError):
                Activity.retry_failed([Activity(root.id)])
        self.assertEqual(RecordActivity(first.id).state, 'failed')

        with transaction.set_user(marketer.id), \
                transaction.set_context(_check_access=True):
            with self.assertRaises(AccessError):
                RecordActivity.write(
                    [RecordActivity(first.id)], {'state': 'waiting'})
            RecordActivity.retry([RecordActivity(first.id)])
            self.assertEqual(
                [ra.state for ra in RecordActivity.browse([first, second])],
                ['waiting', 'failed'])
            Activity.retry_failed([Activity(root.id)])
        self.assertEqual(
            [ra.state for ra in RecordActivity.browse([first, second])],
            ['waiting', 'waiting'])

    @with_transaction()
    def test_activity_added_reaches_enrolled(self):
        """An activity added at the root of a scenario that has records is
        scheduled for those neither blocked nor converted, once; one added
        under another activity waits for its parent to run"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        Record = pool.get('marketing.automation.record')
        create_parties('RA', 4)
        scenario = create_scenario('RA', [email_activity()])
        welcome, = scenario.activities
        Scenario.trigger([scenario])
        blocked, converted, *others = Record.search(
            [('scenario', '=', scenario.id)], order=[('id', 'ASC')])
        Record.block([blocked])
        Record.convert([converted])

        survey, = Activity.create([email_activity(
                    name="Survey", parent=str(scenario),
                    delay=dt.timedelta(days=2))])
        added = record_activities_of(scenario, activity=survey.id)
        self.assertEqual([ra.record for ra in added], others)
        self.assertEqual({ra.state for ra in added}, {'waiting'})
        self.assertTrue(all(
                ra.at > dt.datetime.now() + dt.timedelta(days=1)
                for ra in added))

        # A child is not scheduled before its parent ran
        thanks, = Activity.create([{
                    'name': "Thanks", 'parent': str(welcome),
                    'on': 'email_opened',
                    }])
        self.assertEqual(
            record_activities_of(scenario, activity=thanks.id), [])
        # Moved to the root, it reaches them, and the survey not twice
        Activity.write([thanks, survey], {'parent': str(scenario), 'on': None})
        self.assertEqual(
            [ra.record for ra in record_activities_of(
                    scenario, activity=thanks.id)], others)
        self.assertEqual(
            len(record_activities_of(scenario, activity=survey.id)), 2)

        # A scenario with no record has nothing to schedule
        empty = create_scenario('RX', [email_activity()], run=False)
        self.assertEqual(record_activities_of(empty), [])
