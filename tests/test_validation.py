# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What is refused when a scenario or an activity is saved, and the words
of the refusal: each test saves what a marketer could write"""
import json

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    DatabaseTestCase, create_scenario, email_activity)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

HTML = '<html xmlns:py="http://genshi.edgewall.org/"><body>%s</body></html>'


def eval_(name, default=None):
    return json.dumps({'__class__': 'Eval', 'v': name, 'd': default})


class ValidationTestCase(DatabaseTestCase):
    "Test what is refused at save"

    def refusal(self, Model, values, record=None):
        "Return the message that refuses values, or None when they are saved"
        try:
            if record is None:
                Model.create([values])
            else:
                Model.write([record], values)
        except ValidationError as exception:
            return exception.message

    def activity_refusal(self, **values):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        scenario = create_scenario('VA', [], run=False)
        return self.refusal(Activity, email_activity(
                parent=str(scenario), **values))

    @with_transaction()
    def test_title_unknown_name(self):
        "A title that reads an unknown name is refused with the name"
        message = self.activity_refusal(
            email_title="Hi ${customer.first_name}")
        self.assertEqual(message,
            'The email title of activity "Welcome" is not a valid template: '
            'Line 1: "customer" is not defined. A template knows only '
            '"record", the helpers and the names it defines itself.')

    @with_transaction()
    def test_template_unknown_name_line(self):
        "A template that reads an unknown name is refused with its line"
        message = self.activity_refusal(email_template=HTML % (
                '\n<p>Dear ${record.name},</p>'
                '\n<p py:if="customer.vip">Welcome back</p>'))
        self.assertIn('Line 3: "customer" is not defined', message)

    @with_transaction()
    def test_names_of_the_template(self):
        """The record, the helpers, the builtins and the names that a
        template defines itself are known"""
        template = HTML % (
            '<p py:for="address in record.addresses">${address.street}</p>'
            '<p py:with="lang = record.lang; code = lang.code">${code}</p>'
            '<p py:def="greet(who, greeting=\'Hello\')">'
            '${greeting} ${who}</p>'
            '${greet(record.name)}'
            '<p>${", ".join(a.city for a in record.addresses if a.city)}</p>'
            '<p>${sorted(record.addresses, key=lambda a: a.id)}</p>'
            '<p>${format_date(datetime.date.today())}</p>'
            '<p py:if="defined(\'extra\')">${value_of(\'extra\')}</p>'
            '<p py:match="greeting">${select(\'@name\')}</p>')
        self.assertIsNone(self.activity_refusal(
                email_title="Hi ${record.name.upper()}",
                email_template=template))

    @with_transaction()
    def test_title_unknown_field(self):
        "A title that reads a field the record does not have is refused"
        message = self.activity_refusal(email_title="Hi ${record.emial}")
        self.assertEqual(message,
            'The email title of activity "Welcome" is not a valid template: '
            "Line 1: Party has no field 'emial'.")

    @with_transaction()
    def test_template_unknown_field_of_related(self):
        """A field that the record a field points to does not have is
        refused, with the model of that record"""
        for expression, model, field in [
                ('record.lang.emial', 'Language', 'emial'),
                ('record.addresses[0].stret', 'Party Address', 'stret'),
                ('[a.stret for a in record.addresses]', 'Party Address',
                    'stret'),
                ("record['emial']", 'Party', 'emial'),
                ]:
            with self.subTest(expression=expression):
                message = self.activity_refusal(
                    email_template=HTML % ('\n<p>${%s}</p>' % expression))
                self.assertIn(
                    "Line 2: %s has no field '%s'." % (model, field), message)

    @with_transaction()
    def test_template_for_unknown_field(self):
        "The items of a py:for over records are records of their model"
        message = self.activity_refusal(email_template=HTML % (
                '<p py:for="address in record.addresses">'
                '${address.stret}</p>'))
        self.assertIn("Party Address has no field 'stret'.", message)

    @with_transaction()
    def test_template_field_unknown_type(self):
        "What cannot be known before rendering is not refused"
        self.assertIsNone(self.activity_refusal(email_template=HTML % (
                    '<p>${(record,)[0].emial} ${record.name.emial}</p>')))

    @with_transaction()
    def test_moved_activity(self):
        "An activity is checked again when it moves to another scenario"
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        scenario = create_scenario('VM', [email_activity()], run=False)
        activity, = scenario.activities
        # As an older version could have saved it
        table = Activity.__table__()
        Transaction().connection.cursor().execute(*table.update(
                [table.condition], [eval_('self.emial', False)],
                where=table.id == activity.id))
        # A write through the ORM forgets the values that it read
        Activity.write([activity], {'name': "Welcome"})
        other = create_scenario('VO', [], run=False)
        message = self.refusal(
            Activity, {'parent': str(other)}, Activity(activity.id))
        self.assertIn("Party has no field 'emial'", message)

    @with_transaction()
    def test_condition_unknown_field(self):
        "A condition that reads a field the record does not have is refused"
        message = self.activity_refusal(condition=eval_('self.emial', False))
        self.assertEqual(message,
            'The condition of activity "Welcome" is not valid: '
            "Party has no field 'emial'.")
        message = self.activity_refusal(
            condition=eval_('self._parent_lang.emial', False))
        self.assertIn("Language has no field 'emial'.", message)
        message = self.activity_refusal(condition=json.dumps({
                    '__class__': 'Get', 'v': json.loads(eval_('self', {})),
                    'k': 'emial', 'd': ''}))
        self.assertIn("Party has no field 'emial'.", message)

    @with_transaction()
    def test_condition_unknown_name(self):
        "A condition reads the record as self, and nothing else"
        message = self.activity_refusal(condition=eval_('active', False))
        self.assertIn('"active" is not defined', message)
        self.assertIsNone(self.activity_refusal(
                condition=eval_('self._parent_lang.code', '')))

    def domain_refusal(self, domain, field='domain'):
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        return self.refusal(Scenario, {
                'name': "Newsletter", 'model': 'party.party',
                field: domain})

    @with_transaction()
    def test_domain_unknown_field(self):
        "An unknown field of a domain is named with its model"
        self.assertEqual(
            self.domain_refusal('[["emial", "=", "a@example.com"]]'),
            'The domain of scenario "Newsletter" is not valid: '
            "Party has no field 'emial'.")
        self.assertIn("Party Address has no field 'stret'.",
            self.domain_refusal('[["addresses.stret", "=", "Main"]]'))
        self.assertEqual(
            self.domain_refusal('[["emial", "=", "x"]]', field='goal'),
            'The goal of scenario "Newsletter" is not valid: '
            "Party has no field 'emial'.")

    @with_transaction()
    def test_domain_broken(self):
        "A domain written wrong says what is wrong, never a recursion"
        for domain, expected in [
                ('[["name", "==", "Doe"]]',
                    '"==" is not an operator, in ["name", "==", "Doe"]'),
                ('[["name"]]', '["name"] is not a clause'),
                ('["ANDD", ["name", "=", "Doe"]]', '"ANDD" is not a clause'),
                ('[["name", "=", "Doe"], "OR", ["name", "=", "Roe"]]',
                    '"OR" must come first in its list of clauses'),
                ('[' * 30 + ']' * 30,
                    'nested more than 20 levels deep'),
                ('[' * 2000 + ']' * 2000,
                    'nested more than 20 levels deep'),
                ('[["name.first", "=", "Doe"]]',
                    "The field 'name' of Party does not point to other "
                    "records"),
                ('[["id", "in", 5]]',
                    'The clause ["id", "in", 5] cannot be searched'),
                ('{"name": "Doe"}', 'is not a list of clauses'),
                ('name = Doe', 'is not a list of clauses written in JSON'),
                ]:
            with self.subTest(domain=domain[:40]):
                message = self.domain_refusal(domain)
                self.assertIn(expected, message)
                self.assertNotIn('recursion', message)

    @with_transaction()
    def test_domain_valid(self):
        "The domains that trytond searches are saved"
        for domain in [
                '[]',
                '["OR", ["name", "ilike", "%doe%"], ["code", "=", "X"]]',
                '[["addresses.city", "=", "Liège"]]',
                '[["rec_name", "=", "x"]]',
                '[[["active", "=", true]], ["AND", ["id", ">", 0]]]',
                ]:
            with self.subTest(domain=domain):
                self.assertIsNone(self.domain_refusal(domain))
