# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The marketer's tools: preview, test send, dry run, test mode and copy

None of them may touch the records, the statistics or the reports."""
import datetime as dt

from trytond.exceptions import UserError
from trytond.modules.marketing_automation.dry_run import LISTED
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, create_parties, create_scenario, create_user,
    email_activity, follow, free_port, html_part, links, record_activities_of,
    setting, smtp_server, text_part, unsubscribe_links)
from trytond.pool import Pool
from trytond.pyson import Eval, PYSONDecoder, PYSONEncoder
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction


def run_wizard(name, record, *transitions, commit=False, **values):
    """Run the wizard name on record through the transitions, with the
    values of each state changed by values; return the defaults of each
    view shown, by state

    With commit, the transaction commits after each step, as after each
    call of a client."""
    Wizard = Pool().get(name, type='wizard')
    session_id, start, _ = Wizard.create()
    views, data = {}, {}
    with Transaction().set_context(
            active_model=record.__name__, active_id=record.id,
            active_ids=[record.id]):
        result = Wizard.execute(session_id, {}, start)
        views[start] = result['view']['defaults']
        for state, transition in transitions:
            # The client sends no rec_name of the relations
            data[state] = {k: v for k, v in views[state].items()
                if '.' not in k}
            data[state].update(values.get(state, {}))
            result = Wizard.execute(session_id, data, transition)
            if commit:
                Transaction().commit()
            if 'view' in result:
                views[result['view']['state']] = result['view']['defaults']
    return views


class ToolsTestCase(DatabaseTestCase):
    "The marketer's tools"
    settings = SETTINGS

    def scenario(self, prefix, **values):
        create_parties(prefix, 2)
        return create_scenario(prefix, [email_activity(**values)])

    @with_transaction()
    def test_preview(self):
        "The preview renders the email as sent, with its links untracked"
        scenario = self.scenario('PV')
        activity, = scenario.activities
        views = run_wizard('marketing.automation.activity.preview', activity)
        view = views['start']
        self.assertIsNone(view['error'])
        self.assertEqual(view['record'], 'party.party,%s' % min(
                r.id for r in Pool().get('party.party').search(
                    [('code', 'like', 'PV-%')])))
        self.assertEqual(view['subject'], "Hello PV 0")
        self.assertEqual(view['to'], 'PV 0 <PV-000000@example.com>')
        self.assertEqual(view['from_'], 'shop@example.com')
        self.assertIn('Dear PV 0', view['html'])
        self.assertIn('href="https://shop.example.com/offer"', view['html'])
        self.assertNotIn('<img', view['html'])
        self.assertIn('See the offer <https://shop.example.com/offer>',
            view['text'])
        # Nothing enrolled, nothing archived
        self.assertEqual(record_activities_of(scenario), [])
        self.assertEqual(Pool().get('ir.email').search([
                    ('marketing_automation_activity', '=', activity.id)]), [])

    @with_transaction()
    def test_preview_error(self):
        "The preview of a template that fails for a record says why"
        scenario = self.scenario(
            'PE', email_template='<p>${record.name.missing}</p>')
        activity, = scenario.activities
        view = run_wizard(
            'marketing.automation.activity.preview', activity)['start']
        self.assertIn('could not be rendered', view['error'])
        self.assertIn('missing', view['error'])
        self.assertIsNone(view['html'])

    @with_transaction()
    def test_send_test(self):
        "A test email goes to the addresses, marked, and tracks nothing"
        pool = Pool()
        Email = pool.get('ir.email')
        Record = pool.get('marketing.automation.record')
        scenario = self.scenario('ST')
        activity, = scenario.activities
        with smtp_server() as sink:
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'), ('test', 'send_'), commit=True,
                test={'addresses': 'a@example.com, b@example.org'})
        self.assertEqual(
            sorted(r for _, rs in sink.envelopes for r in rs),
            ['a@example.com', 'b@example.org'])
        message = sink.messages[0]
        self.assertEqual(message['Subject'], "[TEST] Hello ST 0")
        self.assertIn('Dear ST 0', html_part(message))
        self.assertIn('Dear ST 0', text_part(message))
        self.assertIn('https://shop.example.com/offer', links(message))
        self.assertNotIn('<img', html_part(message))
        self.assertIn('a@example.com', views['start']['sent'])

        emails = Email.search([
                ('marketing_automation_activity', '=', activity.id)])
        self.assertEqual(len(emails), 2)
        self.assertTrue(all(e.marketing_automation_test for e in emails))
        self.assertEqual(
            {e.marketing_automation_status for e in emails}, {'sent'})
        self.assertEqual(record_activities_of(scenario), [])

        # The unsubscribe links do nothing, and say so
        urls = unsubscribe_links(message)
        self.assertEqual(len(urls), 2)
        for url in urls:
            self.assertIn('test email', follow(url).get_data(as_text=True))
            self.assertEqual(
                follow(url, data={'unsubscribe': '1'}).status_code, 200)
        self.assertEqual(Record.search([('scenario', '=', scenario.id)]), [])
        self.assertEqual(scenario.record_count, 0)
        self.assertEqual(activity.record_count, 0)

    @with_transaction()
    def test_send_test_default(self):
        """The Send Test and the test mode offer the user's address, none
        when the user has none, and keep what the marketer typed"""
        pool = Pool()
        User = pool.get('res.user')
        scenario = self.scenario('SD')
        activity, = scenario.activities
        marketer = create_user(
            'sd_marketer', ['marketing.group_marketing', 'res.group_admin'])
        with Transaction().set_user(marketer.id):
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'))
            self.assertNotIn('addresses', views['test'])
            start = run_wizard(
                'marketing.automation.scenario.test_mode', scenario)['start']
            self.assertIsNone(start['address'])

        User.write([marketer], {'email': 'marketer@example.com'})
        with Transaction().set_user(marketer.id):
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'))
            self.assertEqual(
                views['test']['addresses'], 'marketer@example.com')
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'), ('test', 'start'), ('start', 'test'),
                test={'addresses': 'other@example.com'})
            self.assertEqual(views['test']['addresses'], 'other@example.com')
            start = run_wizard(
                'marketing.automation.scenario.test_mode', scenario)['start']
            self.assertEqual(start['address'], 'marketer@example.com')

    @with_transaction()
    def test_send_test_after_commit(self):
        """A test email goes once, after its transaction commits: the
        wizard commits nothing, and a rollback sends nothing"""
        pool = Pool()
        Email = pool.get('ir.email')
        transaction = Transaction()

        def send_test():
            scenario = self.scenario('SC')
            activity, = scenario.activities
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'), ('test', 'send_'),
                test={'addresses': 'a@example.com'})
            self.assertIn('a@example.com', views['start']['sent'])
            return activity

        def test_emails():
            return Email.search([('subject', '=', "[TEST] Hello SC 0")])

        with smtp_server() as sink:
            # The rollback comes first: after a commit, the in-memory
            # SQLite database of the tests is left in autocommit mode
            send_test()
            email, = test_emails()
            self.assertEqual(email.marketing_automation_status, 'sending')
            self.assertEqual(sink.messages, [])
            transaction.rollback()
            self.assertEqual(sink.messages, [])
            self.assertEqual(test_emails(), [])

            send_test()
            self.assertEqual(sink.messages, [])
            transaction.commit()
            self.assertEqual(
                [m['Subject'] for m in sink.messages], ["[TEST] Hello SC 0"])
            # Another commit of the same transaction sends nothing more
            transaction.commit()
            self.assertEqual(len(sink.messages), 1)
        email, = test_emails()
        self.assertEqual(email.marketing_automation_status, 'sent')
        self.assertIsNone(email.marketing_automation_claim)

    @with_transaction()
    def test_send_test_server_down(self):
        """A test email that cannot be sent after the commit stays in the
        outbox, and goes with the next delivery"""
        pool = Pool()
        Email = pool.get('ir.email')
        scenario = self.scenario('SD')
        activity, = scenario.activities
        with setting('email', 'uri', 'smtp://127.0.0.1:%s' % free_port()), \
                setting('marketing', 'automation_retry_delay', '0'):
            views = run_wizard(
                'marketing.automation.activity.preview', activity,
                ('start', 'test'), ('test', 'send_'), commit=True,
                test={'addresses': 'a@example.com'})
            self.assertIn('a@example.com', views['start']['sent'])
            email, = Email.search([
                    ('marketing_automation_activity', '=', activity.id)])
            self.assertEqual(email.marketing_automation_status, 'pending')
            self.assertEqual(email.marketing_automation_attempts, 1)
            self.assertTrue(email.marketing_automation_error)
            self.assertTrue(email.marketing_automation_message)

            with smtp_server() as sink:
                Email.marketing_automation_deliver()
        self.assertEqual(
            [m['Subject'] for m in sink.messages], ["[TEST] Hello SD 0"])
        email, = Email.search([
                ('marketing_automation_activity', '=', activity.id)])
        self.assertEqual(email.marketing_automation_status, 'sent')

    @with_transaction()
    def test_send_test_invalid(self):
        "An invalid address is refused and nothing is sent"
        scenario = self.scenario('SI')
        activity, = scenario.activities
        for addresses in ['a@example.com, not an address', 'x@', '  ']:
            with self.subTest(addresses=addresses):
                with smtp_server() as sink, \
                        self.assertRaises(UserError) as cm:
                    run_wizard(
                        'marketing.automation.activity.preview', activity,
                        ('start', 'test'), ('test', 'send_'),
                        test={'addresses': addresses})
                self.assertEqual(sink.messages, [])
                self.assertTrue(cm.exception.message)
        self.assertEqual(Pool().get('ir.email').search([
                    ('marketing_automation_activity', '=', activity.id)]), [])

    @with_transaction()
    def test_dry_run(self):
        """The dry run lists the records to enrol, counts those left out by
        reason and those each root activity keeps, and lays out the tree; it
        changes nothing"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Party = pool.get('party.party')
        Record = pool.get('marketing.automation.record')
        Scenario = pool.get('marketing.automation.scenario')
        create_parties('DR', 3)
        opened = email_activity(
            name="Opened", on='email_opened', delay=dt.timedelta(hours=1))
        late = email_activity(
            name="Not clicked", on='email_clicked_not',
            delay=dt.timedelta(days=2),
            children=[('create', [email_activity(
                                name="Last call",
                                delay=dt.timedelta(days=1))])])
        scenario = create_scenario('DR', [
                email_activity(
                    name="All", children=[('create', [opened, late])]),
                email_activity(
                    name="Some", delay=dt.timedelta(hours=2),
                    condition=PYSONEncoder().encode(
                        Eval('self.code', '').in_(
                            ['DR-000000', 'DR-000003']))),
                ])
        Scenario.trigger([scenario])
        # 3 enrolled, 1 of them blocked; 2 new and 1 unsubscribed
        Record.block(Record.search([
                    ('scenario', '=', scenario.id),
                    ('party.code', '=', 'DR-000001'),
                    ]))
        before = record_activities_of(scenario)
        create_parties('DR', 3, start=3)
        unsubscribed, = Party.search([('code', '=', 'DR-000005')])
        Party.write([unsubscribed], {
                'marketing_scenario_unsubscribed': [('add', [scenario.id])]})

        view = run_wizard(
            'marketing.automation.scenario.dry_run', scenario)['start']
        self.assertEqual(view['enrol_count'], 2)
        self.assertEqual(
            (view['enrolled_count'], view['blocked_count'],
                view['unsubscribed_count']),
            (2, 1, 1))
        to_enrol = Party.search(
            [('code', 'in', ['DR-000003', 'DR-000004'])],
            order=[('id', 'ASC')])
        self.assertEqual(view['records'], [
                {'record': str(p), 'party': p.id} for p in to_enrol])
        kept = {Activity(a['activity']).name: a['record_count']
            for a in view['activities']}
        self.assertEqual(kept, {"All": 2, "Some": 1})
        first, = Party.search([('code', '=', 'DR-000000')])
        self.assertEqual(view['record'], str(first))
        steps = [(s['name'].strip('\u2003'), s['on'], s['starts_on'],
                s['delay'], s['condition']) for s in view['steps']]
        self.assertEqual(steps, [
                ("All", None, 'delay', "", True),
                ("Not clicked", 'email_clicked_not', 'no_event', "2 days",
                    True),
                ("Last call", None, 'delay', "3 days", True),
                ("Opened", 'email_opened', 'event', "1 hour", True),
                ("Some", None, 'delay', "2 hours", True),
                ])
        self.assertEqual(record_activities_of(scenario), before)
        self.assertEqual(
            Record.search_count([('scenario', '=', scenario.id)]), 3)

    @with_transaction()
    def test_dry_run_listed(self):
        "The dry run lists the first records to enrol and counts them all"
        pool = Pool()
        Party = pool.get('party.party')
        create_parties('DL', LISTED + 3)
        scenario = create_scenario('DL', [email_activity()])
        view = run_wizard(
            'marketing.automation.scenario.dry_run', scenario)['start']
        self.assertEqual(view['enrol_count'], LISTED + 3)
        first = Party.search(
            [('code', 'like', 'DL-%')], order=[('id', 'ASC')],
            limit=LISTED)
        self.assertEqual(
            [r['record'] for r in view['records']], [str(p) for p in first])

    @with_transaction()
    def test_test_mode(self):
        """The test mode walks the tree for one record, the delays skipped,
        down the branch of the events the marketer says"""
        pool = Pool()
        Email = pool.get('ir.email')
        create_parties('TM', 1)
        scenario = create_scenario('TM', [email_activity(
                    name="Welcome", email_title="Welcome ${record.name}",
                    children=[('create', [
                                email_activity(
                                    name="Reminder", email_title="Reminder",
                                    delay=dt.timedelta(days=1)),
                                email_activity(
                                    name="Thanks", email_title="Thanks",
                                    on='email_opened'),
                                email_activity(
                                    name="Again", email_title="Again",
                                    on='email_opened_not',
                                    delay=dt.timedelta(days=2)),
                                email_activity(
                                    name="Clicked", email_title="Clicked",
                                    on='email_clicked'),
                                ])])])
        with smtp_server() as sink:
            views = run_wizard(
                'marketing.automation.scenario.test_mode', scenario,
                ('start', 'run_'), ('step', 'opened'), ('step', 'no_event'),
                commit=True, start={'address': 'me@example.com'})
        self.assertEqual(
            [m['Subject'] for m in sink.messages],
            ["[TEST] Welcome TM 0", "[TEST] Reminder", "[TEST] Thanks"])
        self.assertEqual(
            {r for _, rs in sink.envelopes for r in rs}, {'me@example.com'})
        step = views['step']
        self.assertEqual(step['log'].splitlines(), [
                'Welcome: sent "[TEST] Welcome TM 0".',
                'Reminder: sent "[TEST] Reminder".',
                'Again: cancelled.',
                'Thanks: sent "[TEST] Thanks".',
                ])
        # Nothing ran out: "Clicked" still waits, and no record was touched
        self.assertEqual(step['waiting_activities'], 'Clicked (Clicked)')
        self.assertEqual(len(step['emails']), 3)
        self.assertTrue(all(
                e.marketing_automation_test for e in Email.browse(
                    step['emails'])))
        self.assertEqual(record_activities_of(scenario), [])

    @with_transaction()
    def test_copy(self):
        "A copy of a scenario is a draft with the whole tree and no record"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        create_parties('CP', 2)
        scenario = create_scenario('CP', [email_activity(
                    name="Root", children=[('create', [email_activity(
                                    name="Child", on='email_opened')])])])
        Scenario.trigger([scenario])
        copy, = Scenario.copy([scenario])
        self.assertEqual(copy.state, 'draft')
        root, = copy.activities
        self.assertNotEqual(root, scenario.activities[0])
        self.assertEqual(root.name, "Root")
        child, = root.children
        self.assertEqual((child.name, child.on), ("Child", 'email_opened'))
        self.assertEqual(Record.search([('scenario', '=', copy.id)]), [])

    @with_transaction()
    def test_party_relates(self):
        """A party relates to the scenarios it is in, and to its records of
        those it left, each with how and when it left"""
        pool = Pool()
        Action = pool.get('ir.action.act_window')
        ModelData = pool.get('ir.model.data')
        Party = pool.get('party.party')
        Record = pool.get('marketing.automation.record')
        Scenario = pool.get('marketing.automation.scenario')
        create_parties('RL', 2)
        party, other = Party.search(
            [('code', 'like', 'RL-%')], order=[('code', 'ASC')])
        stay, block, leave, goal, only_other = [
            create_scenario('RL', [email_activity()], name=n)
            for n in ["Stay", "Block", "Leave", "Goal", "Other"]]
        leave.unsubscribable = True
        leave.save()
        only_other.domain = PYSONEncoder().encode(
            [('code', '=', 'RL-000001')])
        only_other.save()
        Scenario.trigger([stay, block, leave, goal, only_other])

        def record_of(scenario):
            record, = Record.search([
                    ('scenario', '=', scenario.id),
                    ('party', '=', party.id)])
            return record
        # Block does not unsubscribe, Leave does
        Record.block([record_of(block), record_of(leave)])
        Record.convert([record_of(goal)])
        by_hand = create_scenario(
            'RL', [email_activity()], name="Unsubscribed")
        Party.write([party], {
                'marketing_scenario_unsubscribed': [
                    ('add', [by_hand.id])]})

        def related(xml_id):
            action = Action(ModelData.get_id('marketing_automation', xml_id))
            domain = PYSONDecoder({
                    'active_model': 'party.party', 'active_id': party.id,
                    'active_ids': [party.id],
                    }).decode(action.pyson_domain)
            return pool.get(action.res_model).search(domain)

        self.assertEqual(
            {s.name for s in related('act_scenario_form_relate_party')},
            {"Stay", "Goal"})
        self.assertEqual(
            {(r.scenario.name, r.left)
                for r in related('act_scenario_form_relate_party_left')},
            {("Block", 'blocked'), ("Leave", 'unsubscribed'),
                ("Goal", 'converted')})

        # The party form lists its records: when each entered, and how and
        # when it left
        party = Party(party.id)
        records = {r.scenario.name: r for r in party.marketing_records}
        self.assertEqual(
            sorted(records), ["Block", "Goal", "Leave", "Stay"])
        self.assertEqual(
            {n: r.left for n, r in records.items()},
            {"Stay": None, "Block": 'blocked', "Leave": 'unsubscribed',
                "Goal": 'converted'})
        self.assertIsNone(records["Stay"].left_date)
        for name in ["Block", "Leave", "Goal"]:
            record = records[name]
            self.assertIsInstance(record.left_date, dt.datetime)
            self.assertLessEqual(record.enrolled_date, record.left_date)
        self.assertEqual(
            records["Block"].left_date, records["Block"].blocked_date)
        self.assertEqual(
            records["Goal"].left_date, records["Goal"].converted)
        self.assertEqual(records["Stay"].party, party)
        self.assertEqual(
            [r.scenario.name for r in Party(other.id).marketing_records
                if r.scenario.name == "Other"], ["Other"])
