# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""See an email before it goes: the preview of an activity for a record,
rendered as a report too (email_preview.py), and its test sends

Both render through the templates, the sandbox and the language rule of a
real send (email_.Templates). A test email goes to the addresses typed in,
with [TEST] in its subject, its links to their targets and an unsubscribe
link that does nothing; it creates no record activity, so it counts in no
statistic nor report."""
from email.errors import HeaderParseError
from email.headerregistry import Address

from trytond.i18n import gettext
from trytond.model import ModelView, fields
from trytond.pool import Pool
from trytond.pyson import Bool, Eval
from trytond.tools.email_ import EmailNotValidError, validate_email
from trytond.transaction import Transaction
from trytond.wizard import (
    Button, StateReport, StateTransition, StateView, Wizard)

from . import bounce, email_
from .exceptions import TestAddressError
from .mixin import company_context, company_of, in_company

TEST_PREFIX = '[TEST] '
# The unsubscribe links of a preview or a test lead to no record but to a
# page that says so (routes.py)
TEST_RECORD = 'test'


def sample(scenario):
    "Return a record that the domain of scenario matches, or None"
    Model = Pool().get(scenario.model)
    records = Model.search(
        scenario.pyson_domain, order=[('id', 'ASC')], limit=1)
    return records[0] if records else None


def record_models(scenario):
    "Return the selection of the records of scenario"
    pool = Pool()
    IrModel = pool.get('ir.model')
    if scenario and scenario.model:
        return [(scenario.model, IrModel.get_name(scenario.model))]
    return []


def render(activity, resource, to=None, prefix=''):
    """Return the subject, the HTML and the message of the email of activity
    for resource, in the language of its party, to its party or to, with
    prefix before its subject

    Raise an exception that says why it cannot be rendered."""
    # As a real send: in the company of the record, whoever previews
    with Transaction().set_context(company_context(company_of(resource))):
        return _render(activity, in_company(resource), to, prefix)


def _render(activity, resource, to, prefix):
    party = resource.marketing_party
    if party is None:
        raise ValueError(gettext(
                'marketing_automation.msg_no_party', record=resource.rec_name))
    if to is None:
        if not party.contact_mechanism_get('email'):
            raise ValueError(gettext(
                    'marketing_automation.msg_no_email',
                    party=party.rec_name))
        if not bounce.usable_email(party):
            raise ValueError(gettext(
                    'marketing_automation.msg_email_bounced',
                    party=party.rec_name))
        to = email_.recipient(party)
    language = email_.languages({party.id})[party.id]
    templates = email_.Templates.of(activity, language)
    unsubscribe = email_.unsubscribe_url(TEST_RECORD)
    return templates.render(
        resource, to, email_.untracked(unsubscribe), unsubscribe,
        prefix=prefix)


def test_addresses(text):
    """Return the addresses of text, separated by commas, semicolons or
    spaces

    Raise TestAddressError on the first that is not valid."""
    addresses = []
    for value in (text or '').replace(';', ',').replace(' ', ',').split(','):
        value = value.strip()
        if not value:
            continue
        try:
            value = validate_email(value)
            address = Address(addr_spec=value)
        except (EmailNotValidError, HeaderParseError, ValueError,
                IndexError):
            address = None
        # validate_email lets anything through without email_validator
        if (address is None or not address.username
                or '.' not in address.domain):
            raise TestAddressError(gettext(
                    'marketing_automation.msg_test_address_invalid',
                    address=value))
        addresses.append(address.addr_spec)
    if not addresses:
        raise TestAddressError(gettext(
                'marketing_automation.msg_test_address_missing'))
    return addresses


def send_test(activity, resource, addresses):
    """Send the email of activity for resource to each address as a test,
    once the transaction commits, and return the ir.email of each

    What cannot be sent then stays in the outbox for the next attempts."""
    pool = Pool()
    Email = pool.get('ir.email')
    rows = []
    for address in addresses:
        subject, body, message = render(
            activity, resource, to=address, prefix=TEST_PREFIX)
        rows.append({
                'recipients': address,
                'subject': subject,
                'body': body,
                'message_id': message['Message-ID'],
                'resource': str(resource),
                'marketing_automation_activity': activity.id,
                'marketing_automation_test': True,
                'marketing_automation_message': email_.as_text(message),
                })
    return Email.browse(Email.marketing_automation_send_on_commit(rows))


def sent_text(emails):
    "Return what a marketer reads of the test emails sent"
    lines = []
    for email in emails:
        if email.marketing_automation_status == 'sent':
            lines.append(gettext(
                    'marketing_automation.msg_test_sent',
                    address=email.recipients))
        elif email.marketing_automation_status == 'sending':
            lines.append(gettext(
                    'marketing_automation.msg_test_sending',
                    address=email.recipients))
        else:
            lines.append(gettext(
                    'marketing_automation.msg_test_not_sent',
                    address=email.recipients,
                    error=email.marketing_automation_error or ''))
    return '\n'.join(lines)


class PreviewStart(ModelView):
    "Preview of an activity"
    __name__ = 'marketing.automation.activity.preview.start'

    activity = fields.Many2One(
        'marketing.automation.activity', "Activity", readonly=True)
    record = fields.Reference(
        "Record", selection='get_record_models', required=True,
        help="The record to render the email for.")
    subject = fields.Char("Subject", readonly=True)
    from_ = fields.Char("From", readonly=True)
    to = fields.Char("To", readonly=True)
    html = fields.Text("HTML", readonly=True)
    text = fields.Text("Plain Text", readonly=True)
    error = fields.Text(
        "Error", readonly=True,
        states={
            'invisible': ~Eval('error'),
            })
    sent = fields.Text(
        "Test Emails", readonly=True,
        states={
            'invisible': ~Eval('sent'),
            })

    @fields.depends('activity')
    def get_record_models(self):
        return record_models(self.activity.scenario if self.activity else None)

    @fields.depends('activity', 'record')
    def on_change_record(self):
        for name in ['subject', 'from_', 'to', 'html', 'text', 'error']:
            setattr(self, name, None)
        if not self.activity or not self.record or self.record.id is None:
            return
        try:
            subject, body, message = render(self.activity, self.record)
        except Exception as exception:
            self.error = gettext(
                'marketing_automation.msg_render_failed',
                activity=self.activity.rec_name, exception=exception)
            return
        message = email_.parsed(message)
        self.subject = subject
        self.from_ = message['From']
        self.to = message['To']
        self.html = body
        self.text = message.get_body(('plain',)).get_content()


class PreviewTest(ModelView):
    "Test send of an activity"
    __name__ = 'marketing.automation.activity.preview.test'

    addresses = fields.Char(
        "Addresses", required=True,
        help="The addresses to send the test email to, separated by "
        "commas.")


class Preview(Wizard):
    "Preview the email of an activity and send it as a test"
    __name__ = 'marketing.automation.activity.preview'

    start = StateView(
        'marketing.automation.activity.preview.start',
        'marketing_automation.activity_preview_start_view_form', [
            Button("Close", 'end', 'tryton-close'),
            Button("Show Email", 'show', 'tryton-print',
                states={
                    'readonly': Bool(Eval('error')),
                    }),
            Button("Send Test", 'test', 'tryton-forward', default=True,
                states={
                    'readonly': Bool(Eval('error')),
                    }),
            ])
    test = StateView(
        'marketing.automation.activity.preview.test',
        'marketing_automation.activity_preview_test_view_form', [
            Button("Back", 'start', 'tryton-back'),
            Button("Send", 'send_', 'tryton-ok', default=True),
            ])
    send_ = StateTransition()
    # The email rendered, as the recipient sees it, in a browser
    show = StateReport('marketing.automation.email.preview')

    def default_start(self, fields):
        pool = Pool()
        Start = pool.get('marketing.automation.activity.preview.start')
        if getattr(self.start, 'record', None):
            record = self.start.record
        else:
            record = sample(self.record.scenario)
        preview = Start(activity=self.record, record=record)
        preview.on_change_record()
        values = preview._default_values
        values['sent'] = getattr(self.start, 'sent', None)
        return values

    def default_test(self, fields):
        pool = Pool()
        User = pool.get('res.user')
        if getattr(self.test, 'addresses', None):
            return {'addresses': self.test.addresses}
        # The marketer tests on themselves first
        user = User(Transaction().user)
        return {'addresses': user.email} if user.email else {}

    def transition_send_(self):
        addresses = test_addresses(self.test.addresses)
        emails = send_test(self.record, self.start.record, addresses)
        self.start.sent = sent_text(emails)
        return 'start'

    def do_show(self, action):
        return action, {
            'model': self.record.__name__,
            'id': self.record.id,
            'ids': [self.record.id],
            'record': str(self.start.record),
            }

    def transition_show(self):
        return 'start'
