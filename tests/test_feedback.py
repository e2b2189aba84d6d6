# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Bounces and complaints that come back through the inbound_email route,
as Postfix, Exim, Gmail, Yahoo and Outlook.com write them"""
from email.message import EmailMessage
from email.policy import SMTP

from trytond.modules.marketing_automation.tests.tools import (
    EXTRAS, SETTINGS, DatabaseTestCase, create_parties, create_scenario,
    email_activity, follow, smtp_server)
from trytond.pool import Pool
from trytond.tests.test_tryton import DB_NAME, with_transaction
from trytond.transaction import Transaction

BOUNCES = 'bounces.example.com'


def _fields(*blocks):
    "Return the message/delivery-status body of the field blocks"
    return '\n\n'.join(
        '\n'.join('%s: %s' % i for i in block) for block in blocks) + '\n'


def report(report_type, human, machine_type, machine, original,
        quote='message/rfc822', **headers):
    """Return the raw bytes of a multipart/report made of the human part,
    the machine part and the original message or its headers, written out
    as the mail servers do"""
    boundary = '=_report_%s' % report_type
    if quote == 'message/rfc822':
        quoted = original.as_string(policy=SMTP)
    else:
        quoted = ''.join('%s: %s\r\n' % i for i in original.items())
    lines = ['%s: %s' % (n.replace('_', '-'), v) for n, v in headers.items()]
    lines += [
        'MIME-Version: 1.0',
        'Content-Type: multipart/report; report-type=%s;' % report_type,
        '\tboundary="%s"' % boundary,
        '',
        'This is a MIME-encapsulated message.',
        '',
        '--' + boundary,
        'Content-Type: text/plain; charset=us-ascii',
        '',
        human,
        '--' + boundary,
        'Content-Type: %s' % machine_type,
        '',
        machine,
        '--' + boundary,
        'Content-Type: %s' % quote,
        '',
        quoted,
        '--%s--' % boundary,
        '']
    return '\r\n'.join(lines).encode('utf-8')


def dsn(style, token, address, message, action='failed', status='5.1.1'):
    "Return a delivery status notification of the mail server style"
    verp = 'bounce+%s@%s' % (token, BOUNCES)
    diagnostic = {
        'postfix': 'smtp; 550 5.1.1 <%s>: Recipient address rejected: '
        'User unknown in virtual mailbox table' % address,
        'exim': 'smtp; 550 No Such User Here',
        'gmail': "smtp; 550-5.1.1 The email account that you tried to reach "
        "does not exist.",
        }[style]
    recipient = [
        ('Final-Recipient', 'rfc822; %s' % address),
        ('Original-Recipient', 'rfc822;%s' % address),
        ('Action', action),
        ('Status', status),
        ('Diagnostic-Code', diagnostic),
        ]
    if style == 'postfix':
        return report('delivery-status',
            'This is the mail system at host mx.example.net.\n\n'
            "I'm sorry to have to inform you that your message could not\n"
            'be delivered to one or more recipients.\n',
            'message/delivery-status', _fields([
                    ('Reporting-MTA', 'dns; mx.example.net'),
                    ('X-Postfix-Queue-ID', '4Qx1Ty2Zz'),
                    ('X-Postfix-Sender', 'rfc822; %s' % verp),
                    ('Arrival-Date', 'Sat, 28 Nov 2026 10:00:00 +0100'),
                    ], recipient),
            message, quote='text/rfc822-headers',
            From='MAILER-DAEMON@mx.example.net (Mail Delivery System)',
            To=verp, Subject='Undelivered Mail Returned to Sender',
            Auto_Submitted='auto-replied')
    if style == 'exim':
        return report('delivery-status',
            'This message was created automatically by mail delivery '
            'software.\n\nA message that you sent could not be delivered '
            'to one or more of its\nrecipients. This is a permanent error.\n',
            'message/delivery-status', _fields([
                    ('Reporting-MTA', 'dns; mail.example.org'),
                    ], recipient),
            message,
            From='Mail Delivery System <Mailer-Daemon@mail.example.org>',
            To=verp, Envelope_To=verp, X_Failed_Recipients=address,
            Subject='Mail delivery failed: returning message to sender')
    return report('delivery-status',
        "Address not found\n\nYour message wasn't delivered to %s because "
        "the address couldn't be found.\n" % address,
        'message/delivery-status', _fields([
                ('Reporting-MTA', 'dns; googlemail.com'),
                ('Received-From-MTA', 'dns; shop.example.com'),
                ('Arrival-Date', 'Sat, 28 Nov 2026 01:00:00 -0800 (PST)'),
                ], recipient),
        message, quote='text/rfc822-headers',
        From='Mail Delivery Subsystem <mailer-daemon@googlemail.com>',
        To=verp, Subject='Delivery Status Notification (Failure)')


def arf(style, message):
    "Return an abuse report of the mailbox provider style"
    fields = [
        ('Feedback-Type', 'abuse'),
        ('User-Agent', {
                'outlook': 'Hotmail FBL',
                'yahoo': 'Yahoo!-Mail-Feedback/2.0'}[style]),
        ('Version', '1'),
        ('Original-Mail-From', '<%s>' % message['Return-Path']),
        ('Arrival-Date', 'Sat, 28 Nov 2026 10:00:00 +0000'),
        ('Reported-Domain', 'example.com'),
        ]
    # Both providers redact the recipient
    original = EmailMessage()
    for name, value in message.items():
        if name.lower().startswith(('content-', 'mime-')):
            continue
        original[name] = (
            'redacted@example.net' if name.lower() == 'to' else value)
    original.set_content('(the body)')
    if style == 'outlook':
        return report('feedback-report',
            'This is an email abuse report for an email message received '
            'from IP 192.0.2.1.\n', 'message/feedback-report',
            _fields(fields), original,
            From='staff@hotmail.com', To='fbl@example.com',
            Subject='complaint about message from 192.0.2.1')
    return report('feedback-report',
        'This is an email abuse report.\n', 'message/feedback-report',
        _fields(fields), original, quote='text/rfc822-headers',
        From='feedback@arf.mail.yahoo.com', To='fbl@example.com',
        Subject='FW: News')


class FeedbackTestCase(DatabaseTestCase):
    "Bounces and complaints through inbound_email"
    # All extras, to share the module test's activated database
    modules = ['marketing_automation'] + EXTRAS
    settings = {
        **SETTINGS,
        ('marketing', 'automation_bounce'): BOUNCES,
        }

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.inbox = cls.create_inbox()

    @classmethod
    @with_transaction()
    def create_inbox(cls):
        pool = Pool()
        Inbox = pool.get('inbound.email.inbox')
        inbox = Inbox(name="Bounces", rules=[{
                    'action': 'ir.email|marketing_automation_feedback',
                    }])
        inbox.save()
        Inbox.new_identifier([inbox])
        Transaction().commit()
        return inbox.identifier

    def post(self, data):
        "Post the raw message data to the inbox as a mail server would"
        response = follow(
            '/%s/inbound_email/inbox/%s' % (DB_NAME, self.inbox),
            data=data, method='POST',
            headers={'Content-Type': 'message/rfc822'})
        self.assertEqual(response.status_code, 204)

    @with_transaction()
    def send(self, prefix, count=1, unsubscribable=False):
        """Send the email of a scenario to count parties coded prefix-*;
        return the scenario id and the sent messages with their tokens"""
        pool = Pool()
        Email = pool.get('ir.email')
        create_parties(prefix, count)
        scenario = create_scenario(
            prefix, [email_activity()], unsubscribable=unsubscribable)
        with smtp_server() as sink:
            pool.get('marketing.automation.scenario').trigger([scenario])
            pool.get('marketing.automation.record.activity').process()
        tokens = {e.message_id: e.marketing_automation_token
            for e in Email.search([
                    ('marketing_automation_record.scenario', '=',
                        scenario.id)])}
        Transaction().commit()
        return scenario.id, [(m, tokens[m['Message-ID']])
            for m in sink.messages]

    @with_transaction()
    def state(self, scenario_id):
        """Return the bounce of each address, the blocked records, the
        statistics and the notes of the inbound emails"""
        pool = Pool()
        ContactMechanism = pool.get('party.contact_mechanism')
        InboundEmail = pool.get('inbound.email')
        Record = pool.get('marketing.automation.record')
        Scenario = pool.get('marketing.automation.scenario')
        scenario = Scenario(scenario_id)
        activity, = scenario.activities
        records = Record.search([('scenario', '=', scenario_id)])
        mechanisms = ContactMechanism.search([
                ('party', 'in', [r.party.id for r in records]),
                ('type', '=', 'email')])
        return {
            'bounced': {m.value: bool(m.marketing_bounced)
                for m in mechanisms},
            'blocked': {r.party.code: r.blocked for r in records},
            'unsubscribed': {r.party.code: bool(
                    r.party.marketing_scenario_unsubscribed)
                for r in records},
            'activity': (activity.email_bounced, activity.email_complained),
            'scenario': (scenario.email_bounced, scenario.email_complained),
            'notes': [e.marketing_automation_feedback
                for e in InboundEmail.search([], order=[('id', 'ASC')])],
            }

    def test_bounces(self):
        """A hard bounce of each mail server marks the address bounced and
        blocks the record, once however often it comes"""
        scenario_id, sent = self.send('FB', 3)
        for style, (message, token) in zip(
                ['postfix', 'exim', 'gmail'], sent):
            with self.subTest(style=style):
                address = message['To'].addresses[0].addr_spec
                data = dsn(style, token, address, message)
                self.post(data)
                self.post(data)
                state = self.state(scenario_id)
                self.assertTrue(state['bounced'][address])
                self.assertTrue(state['blocked'][address[:-len(
                                '@example.com')]])
        state = self.state(scenario_id)
        self.assertEqual(state['activity'], (3, 0))
        self.assertEqual(state['scenario'], (3, 0))
        self.assertEqual(
            [n.split(':')[0] for n in state['notes'][-6:]],
            ['Bounced, the record is blocked'] * 6)

    def test_bounce_by_message_id(self):
        "A report sent elsewhere than the return path names the email"
        scenario_id, [(message, token)] = self.send('FM')
        address = message['To'].addresses[0].addr_spec
        data = dsn('postfix', '0' * 32, address, message)
        self.post(data)
        state = self.state(scenario_id)
        self.assertEqual(state['bounced'], {address: True})

    def test_delay(self):
        "A report of a delay changes nothing"
        scenario_id, [(message, token)] = self.send('FD')
        address = message['To'].addresses[0].addr_spec
        self.post(dsn('postfix', token, address, message,
                action='delayed', status='4.4.7'))
        state = self.state(scenario_id)
        self.assertEqual(state['bounced'], {address: False})
        self.assertEqual(state['blocked'], {'FD-000000': False})
        self.assertEqual(
            state['notes'][-1], 'Ignored: the report tells only of a delay.')

    def test_complaints(self):
        """A complaint blocks the record and unsubscribes the party, as an
        unsubscribe does"""
        # Even from a scenario that is not unsubscribable
        scenario_id, sent = self.send('FC', 2)
        for style, (message, _) in zip(['outlook', 'yahoo'], sent):
            with self.subTest(style=style):
                data = arf(style, message)
                self.post(data)
                self.post(data)
        state = self.state(scenario_id)
        self.assertEqual(
            state['blocked'], {'FC-000000': True, 'FC-000001': True})
        self.assertEqual(
            state['unsubscribed'], {'FC-000000': True, 'FC-000001': True})
        self.assertFalse(any(state['bounced'].values()))
        self.assertEqual(state['activity'], (0, 2))
        self.assertEqual(state['scenario'], (0, 2))
        self.assertTrue(state['notes'][-1].startswith(
                'Complaint, the record is blocked: Feedback-Type: abuse'))

    def test_ignored(self):
        """A message that is no report, or that names no email of ours, is
        kept and ignored with the reason"""
        scenario_id, [(message, token)] = self.send('FI')
        plain = EmailMessage()
        plain['From'] = 'someone@example.net'
        plain['To'] = 'bounce+%s@%s' % (token, BOUNCES)
        plain['Subject'] = 'Out of office'
        plain.set_content('I am away.')
        self.post(plain.as_bytes())
        self.assertTrue(self.state(scenario_id)['notes'][-1].startswith(
                'Ignored: not a delivery or a feedback report'))
        stranger = message
        del stranger['Message-ID']
        stranger['Message-ID'] = '<%s@example.com>' % ('f' * 32)
        self.post(dsn('exim', 'e' * 32, 'x@example.com', stranger))
        self.post(b'\x00 not even an email')
        state = self.state(scenario_id)
        self.assertEqual(state['notes'][-2:], [
                'Ignored: the report names no marketing email.',
                state['notes'][-1]])
        self.assertTrue(state['notes'][-1].startswith('Ignored'))
        self.assertEqual(state['blocked'], {'FI-000000': False})
        self.assertEqual(state['activity'], (0, 0))
