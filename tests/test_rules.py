# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What a marketer may change of a scenario and of its records once the
scenario has moved on"""
from trytond.model.exceptions import AccessError, ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    DatabaseTestCase, create_parties, create_scenario, email_activity)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction, check_access


class RulesTestCase(DatabaseTestCase):
    "The rules of the scenarios and of their records"

    @with_transaction()
    def test_model_fixed_once_records(self):
        "The model of a scenario can not change once records are enrolled"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        create_parties('MR', 2)
        scenario = create_scenario('MR', [email_activity()])
        empty = create_scenario('ME', [email_activity()], run=False)
        self.assertFalse(scenario.has_records)

        Scenario.trigger([scenario])
        Scenario.stop([scenario])
        Scenario.draft([scenario])
        scenario = Scenario(scenario.id)
        self.assertTrue(scenario.has_records)
        self.assertFalse(Scenario(empty.id).has_records)
        with self.assertRaisesRegex(
                ValidationError, 'model of scenario "MR".*records'):
            Scenario.write([scenario], {'model': 'res.user'})
        # The same model is no change
        Scenario.write([scenario], {'model': 'party.party'})
        self.assertEqual(Scenario(scenario.id).model, 'party.party')

    @with_transaction()
    def test_blocked_by_button_only(self):
        """The marketer changes blocked with the Block button only: not by
        writing it, nor by creating a blocked record"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        User = pool.get('res.user')
        create_parties('BB', 2)
        scenario = create_scenario('BB', [email_activity()])
        Scenario.trigger([scenario])
        first, second = Record.search(
            [('scenario', '=', scenario.id)], order=[('id', 'ASC')])
        new_party = create_parties('BB', 1, start=2)[-1]
        admin, = User.search([('login', '=', 'admin')])

        with Transaction().set_user(admin.id), check_access():
            with self.assertRaisesRegex(AccessError, 'Block'):
                Record.write([first], {'blocked': True})
            with self.assertRaisesRegex(AccessError, 'Block'):
                Record.create([{
                            'scenario': scenario.id,
                            'record': 'party.party,%s' % new_party,
                            'blocked': True,
                            }])
            # Writing the other fields is not refused by this rule
            Record.write([second], {'record': second.record})

            Record.block([first])
            self.assertTrue(Record(first.id).blocked)
            with self.assertRaisesRegex(AccessError, 'Block'):
                Record.write([first], {'blocked': False})
        self.assertTrue(Record(first.id).blocked)
        self.assertFalse(Record(second.id).blocked)
