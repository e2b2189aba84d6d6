# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
import datetime as dt

from trytond.model.exceptions import AccessError
from trytond.modules.marketing_automation.tests.tools import (
    EXTRAS, TEMPLATE, create_user)
from trytond.pool import Pool
from trytond.tests.test_tryton import ModuleTestCase, with_transaction
from trytond.transaction import Transaction


class MarketingAutomationTestCase(ModuleTestCase):
    "Test Marketing Automation module"
    module = 'marketing_automation'
    extras = EXTRAS

    create_user = staticmethod(create_user)

    @with_transaction()
    def test_record_activities_read_only_for_marketing(self):
        """The marketing group reads the record activities and presses their
        event buttons, but changes them no other way"""
        pool = Pool()
        Party = pool.get('party.party')
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        transaction = Transaction()
        party, = Party.create([{'name': "Reader"}])
        scenario, = Scenario.create([{
                    'name': "Read only", 'model': 'party.party',
                    'domain': '[]',
                    }])
        activity, = Activity.create([{
                    'name': "Welcome", 'parent': str(scenario),
                    'action': 'send_email', 'email_title': "Welcome",
                    'email_template': TEMPLATE,
                    }])
        record, = Record.create([{
                    'scenario': scenario.id, 'record': str(party),
                    }])
        record_activity, = RecordActivity.create([{
                    'record': record.id, 'activity': activity.id,
                    'state': 'done', 'at': dt.datetime.now(),
                    }])
        marketer = self.create_user(
            'ro_marketer', ['marketing.group_marketing'])
        clerk = self.create_user('ro_clerk', ['party.group_party_admin'])

        with transaction.set_user(marketer.id), \
                transaction.set_context(_check_access=True):
            found, = RecordActivity.search([])
            self.assertEqual(found.state, 'done')
            with self.assertRaises(AccessError):
                RecordActivity.write([found], {'at': None})
            with self.assertRaises(AccessError):
                RecordActivity.write([found], {'email_opened': True})
            with self.assertRaises(AccessError):
                RecordActivity.create([{
                            'record': record.id, 'activity': activity.id,
                            }])
            with self.assertRaises(AccessError):
                RecordActivity.delete([found])
            # The events change it
            RecordActivity.on_email_clicked([found])
        record_activity = RecordActivity(record_activity.id)
        self.assertTrue(record_activity.email_opened)
        self.assertTrue(record_activity.email_clicked)

        with transaction.set_user(clerk.id), \
                transaction.set_context(_check_access=True):
            with self.assertRaises(AccessError):
                RecordActivity.search([])
            with self.assertRaises(AccessError):
                RecordActivity.on_email_opened(
                    [RecordActivity(record_activity.id)])


del ModuleTestCase
