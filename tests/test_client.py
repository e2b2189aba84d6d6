# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What a marketer meets in the client and a recipient in the browser:
words, actions, statistics and pages"""
import datetime as dt
import html
import os
import re
from urllib.parse import quote

from lxml import etree

from trytond.modules.marketing_automation.tests.tools import (
    BASE, DatabaseTestCase, create_parties, create_scenario, email_activity,
    follow, run_due, setting)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

MODULE = 'marketing_automation'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [
    'marketing.automation.scenario', 'marketing.automation.activity',
    'marketing.automation.record', 'marketing.automation.record.activity']


def spelled_otherwise(text):
    "Tell whether text writes email another way than Tryton's Email"
    return bool(re.search(r'\b[Ee]-[Mm]ails?\b|\bE-Mail', text or ''))


class ClientTestCase(DatabaseTestCase):
    "Test what the clients and the recipients see"

    @with_transaction()
    def test_one_spelling(self):
        "Every label, help, selection, button and message writes Email"
        pool = Pool()
        texts = []
        for name in MODELS + ['ir.email', 'party.party']:
            Model = pool.get(name)
            for field_name, field in Model._fields.items():
                texts.extend([field.string, field.help or ''])
                selection = getattr(field, 'selection', None)
                if isinstance(selection, list):
                    texts.extend(s for _, s in selection)
        for filename in sorted(
                f for f in os.listdir(ROOT) if f.endswith('.xml')):
            tree = etree.parse(os.path.join(ROOT, filename))
            texts.extend(tree.xpath('//field/text()'))
        for filename in os.listdir(os.path.join(ROOT, 'view')):
            tree = etree.parse(os.path.join(ROOT, 'view', filename))
            texts.extend(tree.xpath('//@string | //@help'))
        self.assertTrue(texts)
        self.assertEqual([t for t in texts if spelled_otherwise(t)], [])

    @with_transaction()
    def test_list_columns_drawable(self):
        """Every list shows its date and time fields through a widget the
        web client can draw: sao has no column for a bare DateTime"""
        pool = Pool()
        View = pool.get('ir.ui.view')
        views = View.search([
                ('module', '=', MODULE),
                ['OR', ('type', '=', 'tree'), ('inherit.type', '=', 'tree')],
                ])
        self.assertTrue(views)
        bare = []
        for view in views:
            Model = pool.get(view.model)
            result = Model.fields_view_get(
                view_id=(view.inherit or view).id, view_type='tree')
            arch = etree.fromstring(result['arch'])
            for field in arch.iter('field'):
                definition = result['fields'].get(field.get('name'), {})
                if (definition.get('type') == 'datetime'
                        and field.get('widget') not in {'date', 'time'}):
                    bare.append((view.model, field.get('name')))
        self.assertEqual(bare, [])

    @with_transaction()
    def test_buttons_read_as_actions(self):
        "The event buttons say what they do"
        pool = Pool()
        Button = pool.get('ir.model.button')
        strings = {b.name: b.string for b in Button.search([
                    ('model', '=', 'marketing.automation.record.activity'),
                    ])}
        self.assertEqual(strings['on_email_opened'], "Simulate Open")
        self.assertEqual(strings['on_email_clicked'], "Simulate Click")

    @with_transaction()
    def test_scenarios_open_on_all(self):
        "The scenarios open where the marketer's scenarios are"
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        ActWindow = pool.get('ir.action.act_window')
        action = ActWindow(ModelData.get_id(
                'marketing_automation', 'act_scenario_form'))
        first = min(action.act_window_domains, key=lambda d: d.sequence)
        self.assertEqual(first.name, "All")
        self.assertFalse(first.domain)
        self.assertEqual(
            sorted(d.name for d in action.act_window_domains),
            ["All", "Draft", "Running", "Stopped"])

    @with_transaction()
    def test_one_email_action_per_target(self):
        """Each of scenario, activity and record offers one email action,
        and it shows their emails"""
        pool = Pool()
        Keyword = pool.get('ir.action.keyword')
        Email = pool.get('ir.email')
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('VE', 2)
        with setting('marketing', 'automation_base', BASE):
            scenario = create_scenario('VE', [email_activity()])
            Scenario.trigger([scenario])
            run_due()
        activity, = scenario.activities
        record = Record.search([('scenario', '=', scenario.id)])[0]
        for target, count in [
                (scenario, 2), (activity, 2), (record, 1)]:
            actions = [k for k in Keyword.get_keyword(
                    'form_relate', (target.__name__, target.id))
                if k['res_model'] == 'ir.email']
            self.assertEqual(len(actions), 1, target.__name__)
            action, = actions
            domain = eval_domain(action, target)
            self.assertEqual(Email.search_count(domain), count)

    @with_transaction()
    def test_filtered_in_statistics(self):
        "The statistics count machine opens and filtered events apart"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('VS', 3)
        with setting('marketing', 'automation_base', BASE):
            scenario = create_scenario('VS', [email_activity()])
            Scenario.trigger([scenario])
            run_due()
        activity, = scenario.activities
        record_activities = RecordActivity.search([
                ('activity', '=', activity.id)], order=[('id', 'ASC')])
        RecordActivity.set_email_flags(
            record_activities[:1], 'email_filtered')
        RecordActivity.set_email_flags(
            record_activities[:2], 'email_opened_machine')
        activity = Activity(activity.id)
        self.assertEqual(activity.email_filtered, 1)
        self.assertEqual(activity.email_opened_machine, 2)
        self.assertEqual(activity.email_opened, 0)

    @with_transaction()
    def test_delay_in_words(self):
        "The lists show the delay in words"
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        scenario = create_scenario('VD', [
                {'name': "Soon", 'delay': dt.timedelta(minutes=1)},
                {'name': "Later", 'delay': dt.timedelta(
                        days=2, hours=4, minutes=30)},
                ], run=False)
        soon, later = sorted(scenario.activities, key=lambda a: a.delay)
        self.assertEqual(Activity(soon.id).delay_text, "1 minute")
        self.assertEqual(
            Activity(later.id).delay_text, "2 days, 4 hours, 30 minutes")
        with Transaction().set_context(language='fr'):
            self.assertEqual(
                Activity(later.id).delay_text.replace('\xa0', ' '),
                "2 jours, 4 heures, 30 minutes")

    def test_unknown_link_page(self):
        "An unknown link answers a small page in the visitor's language"
        with setting('marketing', 'automation_base', BASE):
            for language, expected in [
                    ('fr-FR,fr;q=0.9,en;q=0.5', "Ce lien n'est pas valide."),
                    ('de-DE', "Dieser Link ist ungültig."),
                    ('ja-JP', "This link is not valid."),
                    ('en', "This link is not valid."),
                    ]:
                for url in [
                        BASE + '/m/nodb/c/%s/%s' % ('0' * 32, '0' * 16),
                        BASE + '/m/%20bad/u/x',
                        BASE + '/m/nodb/u/' + '1' * 32,
                        ]:
                    response = follow(url, headers={
                            'Accept-Language': language})
                    self.assertEqual(response.status_code, 404, url)
                    self.assertEqual(response.mimetype, 'text/html')
                    page = html.unescape(response.get_data(as_text=True))
                    self.assertIn(expected, page)
                    self.assert_self_contained(page)

    def test_unsubscribe_page_in_party_language(self):
        """The unsubscribe page speaks the party's language, with the
        scenario's name in that language"""
        @with_transaction()
        def prepare():
            pool = Pool()
            Lang = pool.get('ir.lang')
            Party = pool.get('party.party')
            Record = pool.get('marketing.automation.record')
            Scenario = pool.get('marketing.automation.scenario')
            transaction = Transaction()
            french, = Lang.search([('code', '=', 'fr')])
            Lang.load_translations([french])
            party, = Party.browse(create_parties('VL', 1))
            party.lang = french
            party.save()
            scenario = create_scenario(
                'VL', [email_activity()], name="Newsletter")
            with transaction.set_context(language='fr'):
                Scenario.write([Scenario(scenario.id)], {
                        'name': "Lettre d'information"})
            Scenario.trigger([scenario])
            record, = Record.search([('scenario', '=', scenario.id)])
            transaction.commit()
            return '%s/m/%s/u/%s' % (
                BASE, quote(transaction.database.name, safe=''),
                record.uuid)

        url = prepare()
        with setting('marketing', 'automation_base', BASE):
            response = follow(url, headers={'Accept-Language': 'en'})
        self.assertEqual(response.status_code, 200)
        page = html.unescape(response.get_data(as_text=True))
        self.assertIn('<html lang="fr">', page)
        self.assertIn("Lettre d'information", page)
        self.assertIn("Se désabonner", page)
        self.assertNotIn("Newsletter", page)
        self.assert_self_contained(page)

    def assert_self_contained(self, page):
        "The page loads nothing else and reads well on a phone"
        self.assertIn('<style>', page)
        self.assertIn('name="viewport"', page)
        self.assertNotRegex(page, r'<link|src=|url\(|@import|<script')


def eval_domain(action, record):
    from trytond.pyson import PYSONDecoder
    return PYSONDecoder({
            'active_model': record.__name__,
            'active_id': record.id,
            'active_ids': [record.id],
            }).decode(action['pyson_domain'])
