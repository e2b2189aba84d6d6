# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The retention of the marketing emails: the purge drops the bodies of the
old emails sent or given up, and everything still works after it"""
import base64
import datetime as dt
from types import SimpleNamespace

from sql import Null

from trytond.modules.marketing_automation.tests.test_feedback import dsn
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, SMTPServer, create_parties, create_scenario,
    email_activity, follow, open_images, run_due, setting, smtp_server,
    tracked, unsubscribe_links)
from trytond.pool import Pool
from trytond.tests.test_tryton import DB_NAME, with_transaction
from trytond.transaction import Transaction

REPORT = 'marketing.automation.email.preview'
REFUSED = 'RT-000000@example.com'


class Refusing(SMTPServer):
    "An SMTP server that refuses one address for good"

    def answer_rcpt(self, address):
        if address == REFUSED:
            return '550 5.1.1 <%s>: User unknown' % address


def age(emails, days):
    "Make the emails composed and sent days ago"
    Email = Pool().get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    when = dt.datetime.now().replace(microsecond=0) - dt.timedelta(days=days)
    for email in emails:
        cursor.execute(*table.update(
                [table.create_date, table.marketing_automation_sent_at],
                [when, when if email.marketing_automation_sent_at else Null],
                where=table.id == email.id))


def preview(email):
    "Return the HTML of the Email Preview report of email"
    pool = Pool()
    ModelData = pool.get('ir.model.data')
    Report = pool.get(REPORT, type='report')
    _, content, _, _ = Report.execute([email.id], {
            'model': 'ir.email', 'id': email.id, 'ids': [email.id],
            'action_id': ModelData.get_id(
                'marketing_automation', 'report_email_preview'),
            })
    return bytes(content).decode('utf-8-sig')


def figures(scenario):
    "Return the statistics and the report rows of scenario"
    pool = Pool()
    Scenario = pool.get('marketing.automation.scenario')
    Activity = pool.get('marketing.automation.activity')
    result = {}
    scenario = Scenario(scenario.id)
    activity, = scenario.activities
    activity = Activity(activity.id)
    for record, names in [
            (scenario, ['record_count', 'record_count_blocked',
                    'failed_count', 'email_bounced']),
            (activity, ['record_count', 'failed_count', 'email_opened',
                    'email_clicked', 'email_bounced', 'email_open_rate'])]:
        result[record.__name__] = {n: getattr(record, n) for n in names}
    for kind, key, id_ in [
            ('scenario', 'scenario', scenario.id),
            ('activity', 'activity', activity.id)]:
        Report = pool.get('marketing.automation.reporting.' + kind)
        with Transaction().set_context(period='day'):
            result[kind] = Report.search_read(
                [(key, '=', id_)], fields_names=[
                    'date', 'record_count', 'failed_count'])
    return result


class RetentionTestCase(DatabaseTestCase):
    "The purge of the old marketing emails"
    settings = SETTINGS

    @with_transaction()
    def send(self):
        """Send the email of a scenario to 4 parties, one refused for good,
        put a fifth in the outbox and archive an email of no scenario; make
        them all 91 days old but the last one sent

        Return the scenario id, the messages by address and the emails
        by name."""
        pool = Pool()
        Email = pool.get('ir.email')
        Scenario = pool.get('marketing.automation.scenario')
        create_parties('RT', 4)
        scenario = create_scenario('RT', [email_activity()])
        Scenario.trigger([scenario])
        run_due()
        with smtp_server(Refusing()) as sink:
            Email.marketing_automation_deliver()
        messages = {m['To'].addresses[0].addr_spec: m for m in sink.messages}
        create_parties('RT', 1, start=4)
        Scenario.trigger([scenario])
        run_due()
        other, = Email.create([{
                    'resource': str(scenario),
                    'recipients': 'someone@example.com',
                    'subject': "Not marketing", 'body': '<p>Kept</p>'}])
        emails = {'other': other}
        # Composed in this order, as the days go by
        for name, code in [('failed', 0), ('old', 1), ('old2', 2),
                ('recent', 3), ('pending', 4)]:
            emails[name], = Email.search([
                    ('marketing_automation_record.scenario', '=',
                        scenario.id),
                    ('recipients', 'ilike', '%%RT-%06d@%%' % code)])
        self.assertEqual([emails[n].marketing_automation_status
                for n in ['failed', 'old', 'recent', 'pending']],
            ['failed', 'sent', 'sent', 'pending'])
        age([emails[n] for n in ['failed', 'old', 'old2', 'pending', 'other']],
            91)
        emails = {n: e.id for n, e in emails.items()}
        emails['uuid'] = Email(
            emails['recent']).marketing_automation_record.uuid
        Transaction().commit()
        return scenario.id, messages, emails

    @with_transaction()
    def purge(self, scenario_id, emails):
        """Purge by batches of 2, then again, and check what was kept;
        return the figures"""
        pool = Pool()
        Email = pool.get('ir.email')
        Scenario = pool.get('marketing.automation.scenario')
        scenario = Scenario(scenario_id)
        before = figures(scenario)
        purged = [Email(emails[n]) for n in ['failed', 'old', 'old2']]
        kept = {e.id: (e.marketing_automation_token,
                e.marketing_automation_links, e.message_id,
                e.marketing_automation_record_activity.id)
            for e in purged}
        with setting('marketing', 'automation_batch_size', '2'):
            self.assertEqual(Email.marketing_automation_purge(), 3)
            self.assertEqual(Email.marketing_automation_purge(), 0)

        for email in Email.browse(purged):
            self.assertEqual(
                (email.body, email.marketing_automation_message),
                (None, None))
            self.assertEqual(kept[email.id], (
                    email.marketing_automation_token,
                    email.marketing_automation_links, email.message_id,
                    email.marketing_automation_record_activity.id))
            self.assertTrue(email.marketing_automation_purged())
        for name in ['recent', 'pending', 'other']:
            email = Email(emails[name])
            self.assertTrue(email.body, name)
            self.assertFalse(email.marketing_automation_purged(), name)
        self.assertTrue(
            Email(emails['pending']).marketing_automation_message)
        self.assertEqual(figures(scenario), before)

        content = preview(Email(emails['old']))
        self.assertIn('was purged', content)
        self.assertIn('&quot;Hello RT 1&quot;', content)
        self.assertIn('Dear RT 3,', preview(Email(emails['recent'])))
        return before

    def test_purge(self):
        """Only the old emails sent or given up lose their body; their
        opens, clicks, unsubscribe links, feedback, figures and preview
        still work"""
        scenario_id, messages, emails = self.send()
        self.purge(scenario_id, emails)

        # An open and a click of an old email still count
        message = messages['RT-000001@example.com']
        self.assertEqual(follow(open_images(message)[0]).status_code, 200)
        response = follow(tracked(message)[0])
        self.assertEqual(response.status_code, 302)
        self.assertEqual(
            response.headers['Location'], 'https://shop.example.com/offer')
        # Its unsubscribe link with a target still redirects and blocks
        response = follow(unsubscribe_links(message)[1], data={
                'unsubscribe': '1'})
        self.assertEqual(response.status_code, 303)
        self.assertEqual(
            response.headers['Location'], 'https://shop.example.com/bye')
        # The one-click unsubscribe of another
        message = messages['RT-000002@example.com']
        response = follow(unsubscribe_links(message)[0], data={
                'List-Unsubscribe': 'One-Click'})
        self.assertEqual(response.status_code, 200)
        # A link of Tryton's own module
        database = base64.urlsafe_b64encode(
            DB_NAME.encode('utf-8')).decode('ascii').rstrip('=')
        response = follow('/m/%s/unsubscribe?r=%s' % (
                database, emails['uuid']), data={'unsubscribe': '1'})
        self.assertEqual(response.status_code, 200)
        self.check(scenario_id, messages, emails)

    @with_transaction()
    def check(self, scenario_id, messages, emails):
        """The open, the click and the unsubscribes counted; a delivery
        report still finds its email"""
        pool = Pool()
        Email = pool.get('ir.email')
        Record = pool.get('marketing.automation.record')
        record_activity = Email(
            emails['old']).marketing_automation_record_activity
        self.assertEqual(
            (record_activity.email_opened, record_activity.email_clicked),
            (True, True))
        # A delivery report about a purged email still finds it
        inbound = SimpleNamespace(data=dsn('postfix', '0' * 32,
                'RT-000002@example.com', messages['RT-000002@example.com']),
            marketing_automation_feedback=None)
        email = Email.marketing_automation_feedback(inbound, None)
        self.assertEqual(email.id, emails['old2'])
        self.assertTrue(inbound.marketing_automation_feedback.startswith(
                'Bounced'))
        self.assertEqual({r.party.code: r.blocked for r in Record.search(
                    [('scenario', '=', scenario_id)])}, {
                'RT-000000': False, 'RT-000001': True, 'RT-000002': True,
                'RT-000003': True, 'RT-000004': False})

    @with_transaction()
    def test_retention_days(self):
        """The emails are kept 90 days by default, and for ever with 0 or
        nothing"""
        pool = Pool()
        Email = pool.get('ir.email')
        scenario = create_scenario('RD', [email_activity()])
        activity, = scenario.activities
        emails = Email.create([{
                    'resource': str(activity), 'recipients': 'rd@example.com',
                    'subject': "Sent",
                    'body': '<p>Sent %s days ago</p>' % days,
                    'marketing_automation_activity': activity.id,
                    'marketing_automation_status': 'sent',
                    'marketing_automation_sent_at': dt.datetime.now(),
                    } for days in [91, 89]])
        for email, days in zip(emails, [91, 89]):
            age([email], days)
        Transaction().commit()
        for value in ['0', '']:
            with self.subTest(value=value), setting(
                    'marketing', 'automation_retention_days', value):
                Email.marketing_automation_purge()
                self.assertTrue(all(e.body for e in Email.browse(emails)))
        Email.marketing_automation_purge()
        self.assertEqual(
            [bool(e.body) for e in Email.browse(emails)], [False, True])
        with setting('marketing', 'automation_retention_days', '30'):
            Email.marketing_automation_purge()
        self.assertEqual(
            [bool(e.body) for e in Email.browse(emails)], [False, False])

    @with_transaction()
    def test_cron(self):
        "The purge is a scheduled task"
        pool = Pool()
        Cron = pool.get('ir.cron')
        ModelData = pool.get('ir.model.data')
        method = 'ir.email|marketing_automation_purge'
        self.assertIn(method, dict(Cron.method.selection))
        cron = Cron(
            ModelData.get_id('marketing_automation', 'cron_email_purge'))
        self.assertEqual(cron.method, method)
        self.assertEqual((cron.interval_number, cron.interval_type),
            (1, 'days'))
