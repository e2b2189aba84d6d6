# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The extension points, used by the test module of extension.py: a model
offered to scenarios, a new action whose children wait for its event, and
extra values in the template context"""
import datetime as dt

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, create_scenario, email_activity,
    record_activities_of, smtp_server)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction

VOUCHER = 'marketing.automation.test.voucher'


def create_vouchers(prefix, phones):
    "Create a voucher of a party with an email for each phone"
    pool = Pool()
    Party = pool.get('party.party')
    Voucher = pool.get(VOUCHER)
    parties = Party.create([{
                'name': '%s party %s' % (prefix, i),
                'contact_mechanisms': [('create', [{
                                'type': 'email',
                                'value': '%s-%s@example.com' % (
                                    prefix.lower(), i),
                                }])],
                } for i in range(len(phones))])
    return Voucher.create([{
                'code': '%s-%s' % (prefix, i),
                'party': party.id,
                'phone': phone,
                } for i, (party, phone) in enumerate(zip(parties, phones))])


def create_voucher_scenario(prefix, activities):
    "Create a scenario on the vouchers coded prefix-*"
    return create_scenario(prefix, activities, model=VOUCHER)


class ExtensionTestCase(DatabaseTestCase):
    "Extension points"
    settings = SETTINGS

    @with_transaction()
    def test_model_offered(self):
        "A model with the mixin is offered to scenarios and mailed"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        self.assertIn(VOUCHER, dict(Scenario.get_models()))
        vouchers = create_vouchers('VO', [None, None])
        scenario = create_voucher_scenario('VO', [email_activity(
                    email_title="Your voucher ${record.code}",
                    email_template='<p>Code ${record.code} for '
                    '${record.party.name}</p>')])

        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()

        received = {m['To']: m for m in sink.messages}
        self.assertEqual(sorted(received), [
                'VO party 0 <vo-0@example.com>',
                'VO party 1 <vo-1@example.com>'])
        message = received['VO party 1 <vo-1@example.com>']
        self.assertEqual(message['Subject'], "Your voucher VO-1")
        self.assertIn('Code VO-1 for VO party 1', message.as_string())
        records = {ra.record.record: ra.record
            for ra in record_activities_of(scenario)}
        self.assertEqual(set(records), set(vouchers))
        self.assertEqual(records[vouchers[0]].rec_name, 'VO-0')

    @with_transaction()
    def test_new_action(self):
        """A new action runs on its list of record activities, and the
        children wait for its event"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        TextMessage = pool.get('marketing.automation.test.text_message')
        create_vouchers('TX', ['+3200', '+3201', None])
        scenario = create_voucher_scenario('TX', [{
                    'name': "Text",
                    'action': 'send_text',
                    'children': [('create', [
                                email_activity(
                                    name="Replied", on='text_replied',
                                    email_title="Thanks",
                                    email_template='<p>Thanks</p>'),
                                email_activity(
                                    name="Silent", on='text_replied_not',
                                    delay=dt.timedelta(days=2),
                                    email_title="Still there?",
                                    email_template='<p>?</p>'),
                                ])],
                    }])

        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()
            self.assertEqual(sink.messages, [])

        texts = TextMessage.search([], order=[('phone', 'ASC')])
        self.assertEqual(
            [(t.phone, t.text) for t in texts],
            [('+3200', "Your code: TX-0"), ('+3201', "Your code: TX-1")])
        texted = record_activities_of(scenario, state='done')
        failed, = record_activities_of(scenario, state='failed')
        self.assertEqual(failed.error, "No phone for TX-2")
        self.assertEqual(len(texted), 2)

        # The first voucher replies, twice
        replied = [t.record_activity for t in texts[:1]]
        RecordActivity.on_event(replied, 'text_replied')
        RecordActivity.on_event(replied, 'text_replied')
        with smtp_server() as sink:
            RecordActivity.process()
        message, = sink.messages
        self.assertEqual(message['To'], 'TX party 0 <tx-0@example.com>')
        states = {(ra.activity.name, ra.record.rec_name): ra.state
            for ra in record_activities_of(scenario)}
        self.assertEqual(states, {
                ("Text", 'TX-0'): 'done',
                ("Text", 'TX-1'): 'done',
                ("Text", 'TX-2'): 'failed',
                ("Replied", 'TX-0'): 'done',
                ("Silent", 'TX-0'): 'cancelled',
                ("Replied", 'TX-1'): 'waiting',
                ("Silent", 'TX-1'): 'waiting',
                })

    @with_transaction()
    def test_new_action_events_only(self):
        "A child waits only for an event of its parent's action"
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        with self.assertRaises(ValidationError) as cm:
            create_voucher_scenario('EV', [{
                        'name': "Text",
                        'action': 'send_text',
                        'children': [('create', [email_activity(
                                        on='email_opened')])],
                        }])
        self.assertIn('email_opened', cm.exception.message)
        with self.assertRaises(ValidationError):
            create_voucher_scenario('EW', [email_activity(
                        children=[('create', [email_activity(
                                        on='text_replied',
                                        email_title="${record.code}")])])])
        self.assertEqual(
            Activity.action_events()['send_text'], {'text_replied'})

    @with_transaction()
    def test_template_context(self):
        "Extra values reach the templates, within the sandbox"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_vouchers('SH', [None])
        scenario = create_voucher_scenario('SH', [email_activity(
                    email_title="${shout(record.code)}",
                    email_template='<p>${shout(record.party.name)}</p>')])
        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()
        message, = sink.messages
        self.assertEqual(message['Subject'], 'SH-0')
        self.assertIn('SH PARTY 0', message.as_string())

        # The function is a value, not a way out of the sandbox
        with self.assertRaises(ValidationError):
            create_voucher_scenario('SY', [email_activity(
                        email_template='<p>${shout.__globals__}</p>')])
        create_vouchers('SX', [None])
        scenario = create_voucher_scenario('SX', [email_activity(
                    email_title="${record.code}",
                    email_template='<p>${shout.func_globals}</p>')])
        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()
        self.assertEqual(sink.messages, [])
        record_activity, = record_activities_of(scenario)
        self.assertEqual(record_activity.state, 'failed')
        self.assertIn('"function"', record_activity.error)
