# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The outbox: the archive of sent emails also holds those to send

An email is claimed, sent, then marked as sent in its own commit. So a crash
can only send again the email that was in the SMTP transaction. The outbox
tells the record activities of the emails it gives up, once, through their
transition."""
import datetime as dt
import logging
import smtplib
import time
from collections import defaultdict
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr

from sql import Null

import trytond.config as config
from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, fields
from trytond.pool import Pool, PoolMeta
from trytond.pyson import Bool, Eval
from trytond.sendmail import get_smtp_server
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import bounce, pacing
from .batch import sliced, sliced_rows
from .email_ import html_to_text
from .marketing_automation import current_time, new_token

logger = logging.getLogger(__name__)


def claim_size():
    return config.getint('marketing', 'automation_claim_size', default=100)


def claim_timeout():
    "How long a claimed email is kept before another run takes it"
    return dt.timedelta(seconds=config.getint(
            'marketing', 'automation_claim_timeout', default=15 * 60))


def max_attempts():
    return config.getint('marketing', 'automation_max_attempts', default=8)


def retry_delay(attempts):
    "Return the delay before the next attempt, doubled at each attempt"
    base = config.getint('marketing', 'automation_retry_delay', default=60)
    return dt.timedelta(seconds=min(base * 2 ** (attempts - 1), 24 * 60 * 60))


def envelope(message):
    """Return the sender and the recipients of the raw message

    Only its headers are parsed: sending the stored text as it is costs a
    fraction of parsing and generating the whole message again."""
    headers = HeaderParser().parsestr(message, headersonly=True)
    sender = parseaddr(headers.get('Return-Path') or headers.get('Sender')
        or headers.get('From'))[1]
    recipients = [a for _, a in getaddresses(
            headers.get_all('To', []) + headers.get_all('Cc', []))]
    return sender, recipients


class Unreachable(Exception):
    "The SMTP server cannot be reached"


class Email(metaclass=PoolMeta):
    __name__ = 'ir.email'

    marketing_automation_activity = fields.Many2One(
        'marketing.automation.activity', "Marketing Activity",
        readonly=True)
    marketing_automation_record = fields.Many2One(
        'marketing.automation.record', "Marketing Record", readonly=True)
    marketing_automation_record_activity = fields.Many2One(
        'marketing.automation.record.activity', "Marketing Record Activity",
        readonly=True, ondelete='SET NULL')
    marketing_automation_token = fields.Char(
        "Marketing Token", readonly=True, strip=False)
    marketing_automation_links = fields.Text(
        "Marketing Links", readonly=True)
    marketing_automation_message = fields.Text(
        "Marketing Message", readonly=True)
    marketing_automation_status = fields.Selection([
            (None, ""),
            ('pending', "Pending"),
            ('sending', "Sending"),
            ('sent', "Sent"),
            ('failed', "Failed"),
            ], "Marketing Status", readonly=True,
        states={
            'invisible': ~Eval('marketing_automation_status'),
            })
    marketing_automation_attempts = fields.Integer(
        "Marketing Attempts", readonly=True)
    marketing_automation_error = fields.Text(
        "Marketing Error", readonly=True)
    marketing_automation_next_try = fields.DateTime(
        "Marketing Next Try", readonly=True)
    marketing_automation_sent_at = fields.DateTime(
        "Marketing Sent At", readonly=True)
    marketing_automation_claim = fields.Char(
        "Marketing Claim", readonly=True, strip=False)
    marketing_automation_test = fields.Boolean(
        "Marketing Test", readonly=True,
        help="A test email of a marketer: it tracks nothing and counts in "
        "no statistic.")
    marketing_automation_text = fields.Function(fields.Text(
            "Plain Text",
            states={
                'invisible': ~Eval('marketing_automation_activity'),
                }),
        'get_marketing_automation_text')

    @classmethod
    def __setup__(cls):
        super().__setup__()
        # The HTML of a marketing email reads as one line in a text widget:
        # its plain text is shown instead
        cls.body.states = dict(cls.body.states)
        cls.body.states['invisible'] = Bool(
            Eval('marketing_automation_activity'))
        t = cls.__table__()
        cls._sql_indexes.update({
                Index(t, (t.marketing_automation_token, Index.Equality()),
                    where=t.marketing_automation_token != Null),
                Index(t,
                    (t.marketing_automation_status,
                        Index.Equality(cardinality='low')),
                    (t.marketing_automation_next_try, Index.Range()),
                    where=t.marketing_automation_status.in_(
                        ['pending', 'sending'])),
                Index(t,
                    (t.marketing_automation_record, Index.Range()),
                    (t.marketing_automation_activity, Index.Range())),
                Index(t,
                    (t.marketing_automation_record_activity,
                        Index.Range())),
                Index(t, (t.marketing_automation_claim, Index.Equality()),
                    where=t.marketing_automation_claim != Null),
                })

    @classmethod
    def __register__(cls, module):
        super().__register__(module)
        pacing.register()

    @classmethod
    def marketing_automation_link_record_activities(cls):
        """Link the emails of an earlier version to their record activity

        The record activities call it once their table is complete."""
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        table = cls.__table__()
        record_activity = RecordActivity.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*table.update(
                [table.marketing_automation_record_activity],
                [record_activity.id],
                from_=[record_activity],
                where=(record_activity.activity
                    == table.marketing_automation_activity)
                & (record_activity.record
                    == table.marketing_automation_record)
                & (table.marketing_automation_record_activity == Null)))

    @classmethod
    def view_attributes(cls):
        return super().view_attributes() + [
            ('/form/separator[@name="body"]', 'states', {
                    'invisible': Bool(Eval('marketing_automation_activity')),
                    }),
            ]

    def get_marketing_automation_text(self, name):
        if self.marketing_automation_activity and self.body:
            return html_to_text(self.body)

    @classmethod
    def marketing_automation_store(cls, rows):
        """Put the composed emails in the outbox and have them sent

        rows are dictionaries of the column values."""
        if not rows:
            return
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        names = sorted(rows[0])
        columns = [getattr(table, n) for n in names] + [
            table.create_uid, table.create_date,
            table.marketing_automation_status,
            table.marketing_automation_attempts]
        now = current_time()
        values = [[r[n] for n in names] + [
                transaction.user, now, 'pending', 0] for r in rows]
        # The ORM would insert them one by one on SQLite
        for sub_values in sliced_rows(values, len(columns)):
            cursor.execute(*table.insert(columns, list(sub_values)))
        if config.getboolean('queue', 'worker', default=False):
            cls.marketing_automation_send()

    @classmethod
    def marketing_automation_send_now(cls, rows):
        """Put the emails of rows in the outbox and send them at once,
        committing; return their ids

        For the test emails of a marketer, who waits for them. Those that
        cannot be sent now stay in the outbox for the next attempts."""
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        claim = new_token()
        for row in rows:
            row['marketing_automation_claim'] = claim
        cls.marketing_automation_store(rows)
        # Claimed before the commit, so that no other run sends them
        cursor.execute(*table.update(
                [table.marketing_automation_status,
                    table.marketing_automation_next_try],
                ['sending', current_time()],
                where=table.marketing_automation_claim == claim))
        emails = _claimed(claim)
        transaction.commit()
        _send(emails)
        return [e for e, _, _ in emails]

    @classmethod
    def marketing_automation_send(cls):
        "Send the outbox now, or ask a worker to when there are workers"
        if config.getboolean('queue', 'worker', default=False):
            emails = cls.search([
                    ('marketing_automation_status', 'in',
                        ['pending', 'sending']),
                    ], limit=1)
            if emails:
                cls.__queue__.marketing_automation_deliver(emails)
        else:
            cls.marketing_automation_deliver()

    @classmethod
    def marketing_automation_deliver(cls, emails=None):
        """Send the due emails of the outbox by claimed batches

        emails only tells a worker that there is work."""
        sent = 0
        while True:
            claim = _claim()
            if claim is None:
                break
            emails = _claimed(claim)
            if not emails:
                break
            count, go_on = _send(emails)
            sent += count
            if not go_on:
                break
        return sent

    @classmethod
    def marketing_automation_delivery(cls, record_activities, names):
        "Return the delivery fields of the email of each record activity"
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        values = {n: {ra.id: None for ra in record_activities} for n in names}
        for sub_ids in sliced(list(map(int, record_activities))):
            cursor.execute(*table.select(
                    table.marketing_automation_record_activity,
                    table.marketing_automation_status,
                    table.marketing_automation_attempts,
                    table.marketing_automation_error,
                    table.marketing_automation_next_try,
                    where=reduce_ids(
                        table.marketing_automation_record_activity, sub_ids)
                    & (table.marketing_automation_status != Null)))
            for record_activity, status, attempts, error, next_try in cursor:
                row = {
                    'email_status': status,
                    'email_attempts': attempts,
                    'email_error': error,
                    'email_next_try': (
                        next_try if status == 'pending' else None),
                    }
                for name in names:
                    values[name][record_activity] = row[name]
        return values


_DELIVERY_STATES = {
    'invisible': Eval('activity_action') != 'send_email',
    }


def _delivery(field):
    return fields.Function(field, 'get_email_delivery')


class EmailDelivery:
    "What a record activity shows of the delivery of its email"
    __slots__ = ()

    email_status = _delivery(fields.Selection([
                (None, ""),
                ('pending', "Pending"),
                ('sending', "Sending"),
                ('sent', "Sent"),
                ('failed', "Failed"),
                ], "Email Status", states=_DELIVERY_STATES))
    email_attempts = _delivery(fields.Integer(
            "Email Attempts", states=_DELIVERY_STATES))
    email_error = _delivery(fields.Text(
            "Email Error", states=_DELIVERY_STATES))
    email_next_try = _delivery(fields.DateTime(
            "Email Next Try", states=_DELIVERY_STATES))

    @classmethod
    def get_email_delivery(cls, record_activities, names):
        pool = Pool()
        Email = pool.get('ir.email')
        return Email.marketing_automation_delivery(record_activities, names)


def _connect():
    try:
        return get_smtp_server(pacing.smtp_uri(), strict=True)
    except Exception as exception:
        raise Unreachable(str(exception)) from exception


def _table():
    return Pool().get('ir.email').__table__()


def _claim():
    """Claim a batch of due emails so that no other run sends them, and
    commit; return None when another run holds them"""
    table = _table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    now = current_time()
    claim = new_token()
    due = table.select(
        table.id,
        where=(((table.marketing_automation_status == 'pending')
                & ((table.marketing_automation_next_try == Null)
                    | (table.marketing_automation_next_try <= now)))
            | ((table.marketing_automation_status == 'sending')
                # The run that claimed it died
                & (table.marketing_automation_next_try
                    <= now - claim_timeout()))),
        order_by=[table.id.asc],
        limit=pacing.claim_limit(claim_size(), claim_timeout()))
    database = transaction.database
    if database.has_select_for():
        due.for_ = database.get_select_for_skip_locked()('UPDATE')
    try:
        cursor.execute(*table.update(
                [table.marketing_automation_status,
                    table.marketing_automation_claim,
                    table.marketing_automation_next_try],
                ['sending', claim, now],
                where=table.id.in_(due)))
        transaction.commit()
    except backend.DatabaseOperationalError:
        # Another run is claiming: it sends them
        transaction.rollback()
        return None
    return claim


def _claimed(claim):
    table = _table()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.select(
            table.id, table.marketing_automation_message,
            table.marketing_automation_attempts,
            where=(table.marketing_automation_claim == claim)
            & (table.marketing_automation_status == 'sending'),
            order_by=[table.id.asc]))
    return cursor.fetchall()


def _send(emails):
    """Send the claimed emails at the pace of the database, committing
    after each one

    Return the number sent and whether the run may go on: not when the
    server cannot be reached, hangs or asks to slow down for good.

    The send times are reserved for the whole claim at the rate, or one
    by one during a back-off; those of the emails that go back to the
    outbox unsent are given back. Each change of the outbox is committed
    before the pace is updated, which commits on its own."""
    transaction = Transaction()
    slots, first = pacing.reserve(len(emails)), 0
    if slots is None:
        _release([e for e, _, _ in emails])
        transaction.commit()
        return 0, False
    # Sent well before another run may take the claim back
    deadline = time.time() + claim_timeout().total_seconds() / 2
    connection = pacing.Connection(_connect)
    sent, delivered, go_on = 0, [], True
    for index, (email_id, message, attempts) in enumerate(emails):
        if index - first >= len(slots):
            slots, first = pacing.reserve(len(emails) - index), index
            if slots is None:
                _release([e for e, _, _ in emails[index:]])
                transaction.commit()
                go_on = False
                break
        slot = index - first
        if slots[slot] > deadline:
            _release([e for e, _, _ in emails[index:]])
            transaction.commit()
            pacing.give_back(slots, slot)
            go_on = False
            break
        pacing.wait_until(slots[slot])
        outcome, detail = _send_one(connection, email_id, message, attempts)
        if outcome == 'sent':
            sent += 1
            delivered.extend(detail)
        elif outcome == 'unreachable':
            _retry([(e, a) for e, _, a in emails[index:]], detail)
            go_on = False
        elif outcome in {'timeout', 'throttled'}:
            if outcome == 'throttled':
                _release([email_id], detail)
            # The others of the claim go back to the outbox at once
            _release([e for e, _, _ in emails[index + 1:]])
            go_on = False
        transaction.commit()
        if outcome == 'sent':
            # During a back-off, the server accepting speeds it up
            pacing.accepted(slots, slot)
        elif not go_on:
            pacing.give_back(slots, slot + 1)
        if outcome == 'throttled':
            # The next emails go at the slower pace
            go_on = pacing.slow_down(slots.step)
            break
        if not go_on:
            break
    connection.close()
    bounce.delivered(delivered)
    transaction.commit()
    return sent, go_on


def _send_one(connection, email_id, message, attempts):
    """Send one claimed email and record the result

    Return the outcome: sent, with the recipients; retried or failed; or,
    with the error, unreachable, timeout or throttled, which end the claim.
    A throttled email is left for the caller to release."""
    recipients = []
    try:
        sender, recipients = envelope(message)
        connection.sendmail(sender, recipients, message.encode('utf-8'))
    except Exception as exception:
        cause = exception
        if isinstance(exception, Unreachable):
            cause = exception.__cause__ or exception
        if pacing.throttling(cause):
            connection.drop()
            return 'throttled', str(cause)
        if isinstance(exception, Unreachable):
            return 'unreachable', str(cause)
        hard, soft = bounce.refusals(exception, recipients)
        if hard:
            bounce.bounced(hard, str(exception))
            bounce.flag_emails([email_id], 'email_bounced')
        bounce.refused_for_now(soft, str(exception))
        if bounce.is_permanent(exception):
            _fail([email_id], str(exception), attempts=(attempts or 0) + 1)
            return 'failed', str(exception)
        _retry([(email_id, attempts)], str(exception))
        if pacing.timed_out(exception):
            connection.drop()
            return 'timeout', str(exception)
        if isinstance(exception, (smtplib.SMTPServerDisconnected, OSError)):
            connection.drop()
        return 'retried', str(exception)
    _sent(email_id)
    return 'sent', recipients


def _release(email_ids, error=None):
    """Put claimed emails back in the outbox, due at once, without counting
    an attempt: they were not tried, or the server asked to slow down"""
    if not email_ids:
        return
    table = _table()
    cursor = Transaction().connection.cursor()
    columns = [table.marketing_automation_status,
        table.marketing_automation_claim, table.marketing_automation_next_try]
    values = ['pending', Null, current_time()]
    if error is not None:
        columns.append(table.marketing_automation_error)
        values.append(error)
    for sub_ids in sliced(email_ids):
        cursor.execute(*table.update(columns, values,
                where=reduce_ids(table.id, sub_ids)))


def _sent(email_id):
    table = _table()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.update(
            [table.marketing_automation_status,
                table.marketing_automation_message,
                table.marketing_automation_claim,
                table.marketing_automation_error,
                table.marketing_automation_attempts,
                table.marketing_automation_sent_at],
            ['sent', Null, Null, Null,
                table.marketing_automation_attempts + 1,
                current_time()],
            where=table.id == email_id))


def _retry(emails, error):
    """Put the emails back in the outbox for a later attempt or give up

    emails are (id, attempts so far) pairs, as claimed."""
    table = _table()
    cursor = Transaction().connection.cursor()
    logger.warning("could not send %s emails: %s", len(emails), error)
    now = current_time()
    by_attempts = defaultdict(list)
    for email_id, attempts in emails:
        by_attempts[(attempts or 0) + 1].append(email_id)
    for attempts, ids in by_attempts.items():
        if attempts >= max_attempts():
            _fail(ids, gettext(
                    'marketing_automation.msg_delivery_given_up',
                    attempts=attempts, error=error), attempts=attempts)
            continue
        cursor.execute(*table.update(
                [table.marketing_automation_status,
                    table.marketing_automation_claim,
                    table.marketing_automation_error,
                    table.marketing_automation_attempts,
                    table.marketing_automation_next_try],
                ['pending', Null, error, attempts,
                    now + retry_delay(attempts)],
                where=reduce_ids(table.id, ids)))


def _fail(email_ids, error, attempts=None):
    "Give up the emails and fail their record activities"
    pool = Pool()
    RecordActivity = pool.get('marketing.automation.record.activity')
    table = _table()
    cursor = Transaction().connection.cursor()
    columns = [table.marketing_automation_status,
        table.marketing_automation_claim, table.marketing_automation_error]
    values = ['failed', Null, error]
    if attempts is not None:
        columns.append(table.marketing_automation_attempts)
        values.append(attempts)
    cursor.execute(*table.update(columns, values,
            where=reduce_ids(table.id, email_ids)))
    cursor.execute(*table.select(
            table.marketing_automation_record_activity,
            where=reduce_ids(table.id, email_ids)
            & (table.marketing_automation_record_activity != Null)))
    RecordActivity.fail(
        RecordActivity.browse([i for i, in cursor]), error)
