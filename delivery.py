# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Deliver the outbox to the SMTP server, each email exactly once

An email is claimed, sent, then marked as sent in its own commit. So a
crash can only send again the email that was in the SMTP transaction."""
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
from trytond.pool import Pool
from trytond.sendmail import get_smtp_server
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .marketing_automation import current_time, new_token, sliced

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


def deliver():
    "Send the pending emails of the outbox by claimed batches"
    sent = 0
    while True:
        claim = _claim_retrying()
        emails = _claimed(claim)
        if not emails:
            break
        count, reachable = _send(emails)
        sent += count
        if not reachable:
            break
    return sent


def _table():
    return Pool().get('ir.email').__table__()


def _claim_retrying(retry=5):
    "Claim and commit; a concurrent claim of the same rows makes it retry"
    transaction = Transaction()
    for count in range(retry, -1, -1):
        try:
            claim = _claim()
            transaction.commit()
            return claim
        except backend.DatabaseOperationalError:
            transaction.rollback()
            if not count:
                raise
            time.sleep(0.02 * (retry - count + 1))


def _claim():
    "Claim a batch of due emails so that no other run sends them"
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
        limit=claim_size())
    database = transaction.database
    if database.has_select_for():
        For = database.get_select_for_skip_locked()
        due.for_ = For('UPDATE')
    cursor.execute(*table.update(
            [table.marketing_automation_status,
                table.marketing_automation_claim,
                table.marketing_automation_next_try],
            ['sending', claim, now],
            where=table.id.in_(due)))
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


def envelope(message):
    "Return the sender and the recipients of the raw message"
    headers = HeaderParser().parsestr(message, headersonly=True)
    sender = parseaddr(headers.get('Sender') or headers.get('From'))[1]
    recipients = [a for _, a in getaddresses(
            headers.get_all('To', []) + headers.get_all('Cc', []))]
    return sender, recipients


class _Unreachable(Exception):
    pass


def _send(emails):
    """Send the claimed emails over one connection

    Return the number sent and whether the server could be reached."""
    transaction = Transaction()
    server, sent = None, 0
    for index, (email_id, message, attempts) in enumerate(emails):
        try:
            if server is None:
                server = _connect()
            sender, recipients = envelope(message)
            refused = server.sendmail(
                sender, recipients, message.encode('utf-8'))
            if refused:
                raise smtplib.SMTPRecipientsRefused(refused)
        except _Unreachable as exception:
            _retry([(e, a) for e, _, a in emails[index:]],
                str(exception.__cause__ or exception))
            transaction.commit()
            return sent, False
        except Exception as exception:
            if _is_permanent(exception):
                _fail([email_id], str(exception),
                    attempts=(attempts or 0) + 1)
            else:
                _retry([(email_id, attempts)], str(exception))
                if isinstance(exception, (
                            smtplib.SMTPServerDisconnected, OSError)):
                    server = _close(server)
        else:
            _sent(email_id)
            sent += 1
        transaction.commit()
    _close(server)
    return sent, True


def _connect():
    try:
        return get_smtp_server(strict=True)
    except Exception as exception:
        raise _Unreachable(str(exception)) from exception


def _close(server):
    if server is not None:
        try:
            server.quit()
        except Exception:
            pass


def _is_permanent(exception):
    if isinstance(exception, smtplib.SMTPRecipientsRefused):
        return all(
            500 <= code <= 599 for code, _ in exception.recipients.values())
    if isinstance(exception, smtplib.SMTPResponseException):
        return 500 <= exception.smtp_code <= 599
    # A broken message would fail again at every attempt
    return isinstance(exception, (ValueError, UnicodeError))


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
            table.marketing_automation_activity,
            table.marketing_automation_record,
            where=reduce_ids(table.id, email_ids)))
    RecordActivity.fail_delivery(cursor.fetchall(), error)


def get_delivery(record_activities, names):
    "Return the delivery fields of the email of each record activity"
    table = _table()
    cursor = Transaction().connection.cursor()
    values = {n: {ra.id: None for ra in record_activities} for n in names}
    by_pair = {(ra.activity.id, ra.record.id): ra.id
        for ra in record_activities}
    record_ids = sorted({r for _, r in by_pair})
    for sub_ids in sliced(record_ids):
        cursor.execute(*table.select(
                table.marketing_automation_activity,
                table.marketing_automation_record,
                table.marketing_automation_status,
                table.marketing_automation_attempts,
                table.marketing_automation_error,
                table.marketing_automation_next_try,
                where=reduce_ids(table.marketing_automation_record, sub_ids)
                & (table.marketing_automation_status != Null)))
        for activity, record, status, attempts, error, next_try in cursor:
            record_activity = by_pair.get((activity, record))
            if record_activity is None:
                continue
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
