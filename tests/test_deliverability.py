# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Deliverability and consent: bounces, the headers that name an email and
what each tracking mode tracks"""
import datetime as dt

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    BASE, SETTINGS, DatabaseTestCase, SMTPServer, create_parties,
    create_scenario, email_activity, follow, html_part, links, open_images,
    record_activities_of, setting, smtp_server, tracked, unsubscribe_links)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction


class Refusing(SMTPServer):
    "A mail server that refuses the addresses it is told to"

    def __init__(self, rcpt=None, data=None):
        super().__init__()
        self.rcpt = rcpt or {}
        self.data = data or {}

    def answer_rcpt(self, address):
        return self.rcpt.get(address)

    def answer_data(self, sender, recipients, content):
        for address in recipients:
            if address in self.data:
                return self.data[address]


def mechanism(code):
    ContactMechanism = Pool().get('party.contact_mechanism')
    mechanism, = ContactMechanism.search(
        [('value', '=', code + '@example.com')])
    return mechanism


def send(scenario, server=None):
    pool = Pool()
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')
    with smtp_server(server) as sink:
        Scenario.trigger([scenario])
        RecordActivity.process()
    return sink


class DeliverabilityTestCase(DatabaseTestCase):
    "Deliverability and consent"
    settings = SETTINGS

    @with_transaction()
    def test_hard_bounce(self):
        """A permanent refusal at RCPT or DATA marks the address bounced,
        and no scenario sends to it again until it is edited"""
        create_parties('HB', 3)
        server = Refusing(
            rcpt={'HB-000000@example.com': '550 5.1.1 No such user'},
            data={'HB-000001@example.com': '554 5.7.1 Refused'})
        scenario = create_scenario('HB', [email_activity()])
        sink = send(scenario, server)
        self.assertEqual(
            [rs for _, rs in sink.envelopes], [['HB-000002@example.com']])
        for code, reason in [('HB-000000', 'No such user'),
                ('HB-000001', 'Refused')]:
            bounced = mechanism(code)
            self.assertTrue(bounced.marketing_bounced)
            self.assertIn(reason, bounced.marketing_bounce_reason)
        self.assertFalse(mechanism('HB-000002').marketing_bounced)
        failed = record_activities_of(scenario, state='failed')
        self.assertEqual(len(failed), 2)

        # Another scenario does not send to the bounced addresses
        again = create_scenario('HB', [email_activity()], name="Again")
        sink = send(again)
        self.assertEqual(
            [rs for _, rs in sink.envelopes], [['HB-000002@example.com']])
        errors = {ra.error for ra in record_activities_of(
                again, state='failed')}
        self.assertEqual(errors, {
                'Every email address of "HB 0" bounced.',
                'Every email address of "HB 1" bounced.'})

        # Edited, the address gets email again
        edited = mechanism('HB-000000')
        edited.value = 'hb-0@example.org'
        edited.save()
        self.assertIsNone(edited.marketing_bounced)
        self.assertIsNone(edited.marketing_bounce_reason)
        third = create_scenario('HB', [email_activity()], name="Third")
        sink = send(third)
        self.assertIn(
            ['hb-0@example.org'], [rs for _, rs in sink.envelopes])

    @with_transaction()
    def test_soft_bounces(self):
        """Temporary refusals in a row mark the address bounced at the
        limit; a delivery starts the count again"""
        pool = Pool()
        Email = pool.get('ir.email')
        create_parties('SB', 2)
        scenario = create_scenario('SB', [email_activity()])
        server = Refusing(rcpt={
                'SB-000000@example.com': '451 4.2.0 Try later',
                'SB-000001@example.com': '452 4.2.2 Mailbox full'})
        with setting('marketing', 'automation_soft_bounce_limit', '2'):
            send(scenario, server)
            self.assertEqual(mechanism('SB-000000').marketing_soft_bounces, 1)
            self.assertFalse(mechanism('SB-000000').marketing_bounced)

            # The second address gets through, its count starts again
            del server.rcpt['SB-000001@example.com']
            Email.write(Email.search([
                        ('marketing_automation_status', '=', 'pending')]),
                {'marketing_automation_next_try': None})
            with smtp_server(server):
                Email.marketing_automation_send()
            self.assertEqual(mechanism('SB-000001').marketing_soft_bounces, 0)
            first = mechanism('SB-000000')
            self.assertEqual(first.marketing_soft_bounces, 2)
            self.assertTrue(first.marketing_bounced)
            self.assertIn('Try later', first.marketing_bounce_reason)
            self.assertFalse(mechanism('SB-000001').marketing_bounced)

    @with_transaction()
    def test_headers(self):
        """Each email has a stable Message-ID, a Feedback-ID and, with a
        bounce domain, a return path that names it"""
        pool = Pool()
        Email = pool.get('ir.email')
        create_parties('HD', 1)
        scenario = create_scenario('HD', [email_activity()])
        with setting('marketing', 'automation_bounce', 'bounces.example.com'):
            sink = send(scenario)
        message, = sink.messages
        (sender, _), = sink.envelopes
        email, = Email.search([
                ('marketing_automation_record.scenario', '=', scenario.id)])
        token = email.marketing_automation_token
        self.assertEqual(sender, 'bounce+%s@bounces.example.com' % token)
        self.assertEqual(message['Message-ID'], '<%s@example.com>' % token)
        self.assertEqual(email.message_id, message['Message-ID'])
        activity, = scenario.activities
        self.assertEqual(
            message['Feedback-ID'], '%s:%s:marketing_automation:example.com'
            % (activity.id, scenario.id))

        # Without a bounce domain, the sender is the From
        other = create_scenario('HD', [email_activity()], name="Other")
        (sender, _), = send(other).envelopes
        self.assertEqual(sender, 'news@example.com')

    def test_tracking_modes(self):
        """Clicks only has no open image; none has neither image nor
        tracked links, and its unsubscribe link still works; a party that
        refuses tracking gets untracked emails"""
        @with_transaction()
        def send_one(prefix, tracking='full', refused=False):
            Party = Pool().get('party.party')
            create_parties(prefix, 1)
            if refused:
                Party.write(
                    Party.search([('code', 'like', prefix + '-%')]),
                    {'marketing_tracking_refused': True})
            scenario = create_scenario(
                prefix, [email_activity()], tracking=tracking)
            message, = send(scenario).messages
            Transaction().commit()
            return message, scenario.id

        @with_transaction()
        def blocked(scenario_id):
            Record = Pool().get('marketing.automation.record')
            record, = Record.search([('scenario', '=', scenario_id)])
            return record.blocked

        for prefix, tracking, image, tracked_links in [
                ('TF', 'full', True, True),
                ('TC', 'clicks', False, True),
                ('TN', 'none', False, False)]:
            with self.subTest(tracking=tracking):
                message, scenario_id = send_one(prefix, tracking)
                self.assertEqual(bool(open_images(message)), image)
                self.assertEqual(bool(tracked(message)), tracked_links)
                if not tracked_links:
                    self.assertIn(
                        'https://shop.example.com/offer', links(message))
                self.assertTrue(message['List-Unsubscribe'])
                url = unsubscribe_links(message)[0]
                self.assertTrue(url.startswith(BASE))
                self.assertFalse(blocked(scenario_id))
                follow(url, data={'unsubscribe': '1'})
                self.assertTrue(blocked(scenario_id))

        message, _ = send_one('TR', refused=True)
        self.assertEqual(open_images(message), [])
        self.assertEqual(tracked(message), [])
        self.assertIn('https://shop.example.com/offer', html_part(message))
        self.assertTrue(unsubscribe_links(message))

    def test_aggregate_opens(self):
        """Counting opens by activity keeps no trace of who opened: one
        image for all, no tracked link, no branch on an open"""
        @with_transaction()
        def send_aggregate():
            create_parties('AG', 2)
            scenario = create_scenario(
                'AG', [email_activity()], tracking='aggregate')
            messages = send(scenario).messages
            Transaction().commit()
            activity, = scenario.activities
            return messages, activity.id

        @with_transaction()
        def counted(activity_id):
            pool = Pool()
            Activity = pool.get('marketing.automation.activity')
            RecordActivity = pool.get('marketing.automation.record.activity')
            opened = RecordActivity.search([
                    ('activity', '=', activity_id),
                    ('email_opened', '=', True)])
            return Activity(activity_id).email_opened_count, len(opened)

        messages, activity_id = send_aggregate()
        images = {open_images(m)[0] for m in messages}
        self.assertEqual(len(images), 1)
        image, = images
        self.assertIn('/oa/', image)
        for message in messages:
            self.assertEqual(tracked(message), [])
            self.assertTrue(unsubscribe_links(message))
        for _ in range(3):
            response = follow(image)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.mimetype, 'image/gif')
        follow(image, user_agent='Mozilla/5.0 (compatible; Barracuda)')
        self.assertEqual(counted(activity_id), (3, 0))
        bad = image[:-len('.gif')] + 'x.gif'
        self.assertEqual(follow(bad).status_code, 404)
        unknown = image.rsplit('/', 1)[0] + '/' + '0' * 32 + '.gif'
        self.assertEqual(follow(unknown).status_code, 404)
        self.assertEqual(counted(activity_id), (3, 0))

    @with_transaction()
    def test_untracked_branches_refused(self):
        "A branch on an event that the tracking mode cannot see is refused"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        for tracking, on in [
                ('clicks', 'email_opened'), ('clicks', 'email_opened_not'),
                ('aggregate', 'email_opened'),
                ('aggregate', 'email_clicked_not'),
                ('none', 'email_clicked'), ('none', 'email_opened')]:
            with self.subTest(tracking=tracking, on=on):
                child = email_activity(on=on, delay=dt.timedelta(days=1))
                with self.assertRaises(ValidationError) as cm:
                    create_scenario('UB', [email_activity(
                                children=[('create', [child])])],
                        tracking=tracking)
                self.assertIn('does not track', cm.exception.message)
        # Allowed: clicks under clicks only
        create_scenario('UB', [email_activity(
                    children=[('create', [email_activity(
                                    on='email_clicked')])])],
            tracking='clicks')
        # A mode that hides an existing branch is refused
        scenario = create_scenario('UC', [email_activity(
                    children=[('create', [email_activity(
                                    on='email_opened')])])])
        scenario.tracking = 'clicks'
        with self.assertRaises(ValidationError):
            scenario.save()
        Scenario.write([scenario], {'tracking': 'full'})
