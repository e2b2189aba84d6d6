# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Keep the list clean: an address that bounces gets no more email

A permanent refusal of the mail server (5xx) marks the address bounced at
once, with the reason and the date. Temporary refusals (4xx) are counted:
enough of them in a row within a span mark it too, and a delivery starts
the count again. No scenario sends to a bounced address until someone
edits it."""
import datetime as dt
import smtplib

from sql import Null
from sql.conditionals import Case
from sql.functions import Lower

import trytond.config as config
from trytond.model import fields
from trytond.pool import Pool, PoolMeta
from trytond.pyson import Eval
from trytond.transaction import Transaction

from .batch import sliced
from .marketing_automation import current_time


def is_permanent(exception):
    "Tell whether the failure would happen again at every attempt"
    if isinstance(exception, smtplib.SMTPRecipientsRefused):
        return all(
            500 <= code <= 599 for code, _ in exception.recipients.values())
    if isinstance(exception, smtplib.SMTPResponseException):
        return 500 <= exception.smtp_code <= 599
    return isinstance(exception, (ValueError, UnicodeError))


def refusals(exception, recipients):
    """Return the recipients that exception refused for good and those it
    refused for now, at RCPT or at DATA"""
    if isinstance(exception, smtplib.SMTPRecipientsRefused):
        codes = {a: c for a, (c, _) in exception.recipients.items()}
    elif isinstance(exception, smtplib.SMTPDataError):
        codes = dict.fromkeys(recipients, exception.smtp_code)
    else:
        # The sender, the connection or the message: not the address
        return [], []
    return ([a for a, c in codes.items() if 500 <= c <= 599],
        [a for a, c in codes.items() if 400 <= c <= 499])


_RESET = {
    'marketing_bounced': None,
    'marketing_bounce_reason': None,
    'marketing_soft_bounces': 0,
    'marketing_soft_bounce_since': None,
    }


def soft_bounce_limit():
    "How many temporary refusals in a row mark an address bounced"
    return config.getint(
        'marketing', 'automation_soft_bounce_limit', default=5)


def soft_bounce_span():
    "Within how long the temporary refusals must come"
    return dt.timedelta(days=config.getint(
            'marketing', 'automation_soft_bounce_days', default=7))


class ContactMechanism(metaclass=PoolMeta):
    __name__ = 'party.contact_mechanism'

    _email_states = {
        'invisible': Eval('type') != 'email',
        }
    marketing_bounced = fields.DateTime(
        "Bounced", readonly=True, states=_email_states,
        help="When the mail server refused the address for good: no "
        "marketing email goes to it until it is edited.")
    marketing_bounce_reason = fields.Text(
        "Bounce Reason", readonly=True, states={
            'invisible': ~Eval('marketing_bounced'),
            })
    marketing_soft_bounces = fields.Integer(
        "Temporary Failures", readonly=True, states=_email_states,
        help="The temporary refusals in a row of the mail server.")
    marketing_soft_bounce_since = fields.DateTime(
        "Temporary Failures Since", readonly=True, states=_email_states)
    del _email_states

    @classmethod
    def default_marketing_soft_bounces(cls):
        return 0

    @property
    def marketing_usable(self):
        "The usage of the addresses that marketing emails may go to"
        return bool(self.value) and not self.marketing_bounced

    @classmethod
    def write(cls, *args):
        # Someone who edits the address vouches for it again
        actions = iter(args)
        args = []
        for mechanisms, values in zip(actions, actions):
            if {'value', 'type'} & set(values):
                values = {**values, **_RESET}
            args.extend((mechanisms, values))
        super().write(*args)

    @classmethod
    def copy(cls, mechanisms, default=None):
        default = default.copy() if default is not None else {}
        for name, value in _RESET.items():
            default.setdefault(name, value)
        return super().copy(mechanisms, default=default)


def usable_email(party):
    "Return the first email contact mechanism of party that did not bounce"
    mechanism = party.contact_mechanism_get('email', usage='marketing_usable')
    # Without a usable one, party's rule falls back on the first email
    if mechanism is not None and mechanism.marketing_usable:
        return mechanism


def _table():
    return Pool().get('party.contact_mechanism').__table__()


def _email(table, addresses):
    # A server may write the address in another case
    return ((table.type == 'email')
        & Lower(table.value).in_(sorted({a.lower() for a in addresses})))


def flag_emails(email_ids, name):
    """Set the flag name on the record activities of the emails that do not
    have it yet"""
    pool = Pool()
    Email = pool.get('ir.email')
    RecordActivity = pool.get('marketing.automation.record.activity')
    emails = Email.read(
        list(email_ids), ['marketing_automation_record_activity'])
    RecordActivity.set_email_flags(RecordActivity.browse([
                e['marketing_automation_record_activity'] for e in emails
                if e['marketing_automation_record_activity'] is not None]),
        name)


def bounced(addresses, reason):
    "Mark the email contact mechanisms of addresses bounced for reason"
    if not addresses:
        return
    table = _table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    now = current_time()
    cursor.execute(*table.update(
            [table.marketing_bounced, table.marketing_bounce_reason,
                table.write_uid, table.write_date],
            [now, reason, transaction.user, now],
            where=_email(table, addresses)
            & (table.marketing_bounced == Null)))


def refused_for_now(addresses, reason):
    """Count a temporary refusal of the addresses, and mark bounced those
    that reach the limit within the span"""
    if not addresses:
        return
    table = _table()
    cursor = Transaction().connection.cursor()
    now = current_time()
    # A count older than the span starts again
    again = ((table.marketing_soft_bounce_since == Null)
        | (table.marketing_soft_bounce_since < now - soft_bounce_span()))
    cursor.execute(*table.update(
            [table.marketing_soft_bounces, table.marketing_soft_bounce_since],
            [Case((again, 1), else_=table.marketing_soft_bounces + 1),
                Case((again, now), else_=table.marketing_soft_bounce_since)],
            where=_email(table, addresses)))
    cursor.execute(*table.select(table.value,
            where=_email(table, addresses)
            & (table.marketing_soft_bounces >= soft_bounce_limit())))
    bounced([v for v, in cursor], reason)


def delivered(addresses):
    "Start again the count of temporary refusals of the addresses delivered"
    table = _table()
    cursor = Transaction().connection.cursor()
    for sub_addresses in sliced(sorted(set(addresses))):
        cursor.execute(*table.update(
                [table.marketing_soft_bounces,
                    table.marketing_soft_bounce_since],
                [0, Null],
                where=_email(table, sub_addresses)
                & (table.marketing_soft_bounces > 0)))
