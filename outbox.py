# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The outbox: the archive of sent emails also holds those to send

An email is claimed, sent, then recorded as sent in its own commit (Sent),
which its claim settles into ir_email at its end. So a crash can only send
again the email that was in the SMTP transaction. The outbox
tells the record activities of the emails it gives up, once, through their
transition.

Only the delivery task commits. The test emails of a wizard are claimed in
its transaction and sent once trytond commits it (SendOnCommit)."""
import datetime as dt
import logging
import re
import smtplib
import time
from collections import defaultdict
from email.utils import getaddresses, parseaddr

from sql import Null
from sql.aggregate import Max

import trytond.config as config
from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, ModelSQL, fields
from trytond.pool import Pool
from trytond.sendmail import get_smtp_server
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import bounce, pacing
from .batch import sliced
from .marketing_automation import current_time, new_token

logger = logging.getLogger(__name__)


# The delivery tasks queued at once for the workers: each one claims until
# nothing is due, so those beyond the running workers find nothing to do
DELIVERY_TASKS = 4


def claim_size():
    return config.getint('marketing', 'automation_claim_size', default=200)


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

    Only the headers that name them are read: sending the stored text as it
    is costs a fraction of parsing and generating the whole message again,
    and the email package's parser costs as much as sending."""
    head = message.split('\r\n\r\n', 1)[0].replace('\r\n', '\n')
    headers = defaultdict(list)
    # Folded lines go on with white space
    for line in re.split(r'\n(?![ \t])', head):
        name, colon, value = line.partition(':')
        if colon:
            headers[name.strip().lower()].append(value.strip())
    sender = parseaddr(next(iter(headers['return-path'] or headers['sender']
                or headers['from']), ''))[1]
    recipients = [a for _, a in getaddresses(headers['to'] + headers['cc'])]
    return sender, recipients


class Unreachable(Exception):
    "The SMTP server cannot be reached"


class Sent(ModelSQL):
    """An email that the server accepted, and that its claim has not yet
    marked as sent in ir_email

    A narrow row inserted and committed as each email is accepted: the
    update of the wide row of ir_email and of its indexes costs several
    times more, so it is done once for the claim (settle). A claim taken
    back from a run that died leaves out the emails that have one, and
    each delivery run first settles them (settle_dead)."""
    __name__ = 'marketing.automation.email.sent'

    email = fields.Many2One(
        'ir.email', "Email", required=True, ondelete='CASCADE')

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_indexes.add(Index(t, (t.email, Index.Equality())))


def deliver():
    "Send the due emails of the outbox by claimed batches; return the count"
    settle_dead()
    sent, delivered = 0, []
    # One connection for every claim: a greeting costs as much as dozens
    # of emails
    connection = pacing.Connection(_connect)
    try:
        while True:
            token = claim()
            if token is None:
                break
            emails = claimed(token)
            if not emails:
                break
            count, go_on = send(emails, connection, delivered)
            sent += count
            if not go_on:
                break
    finally:
        connection.close()
    bounce.delivered(delivered)
    Transaction().commit()
    return sent


def claim_on_commit(rows):
    """Put the emails of rows in the outbox, claimed for the transaction,
    to be sent once it commits; return their ids

    For the test emails of a marketer, which go at once and whose wizard
    must not commit. Rolled back, they are neither stored nor sent."""
    table = _table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    token = new_token()
    for row in rows:
        row['marketing_automation_claim'] = token
    Pool().get('ir.email').marketing_automation_store(rows)
    # Claimed in the transaction, so that no other run takes them
    cursor.execute(*table.update(
            [table.marketing_automation_status,
                table.marketing_automation_next_try],
            ['sending', current_time()],
            where=table.marketing_automation_claim == token))
    transaction.join(SendOnCommit()).tokens.append(token)
    return [e for e, _, _ in claimed(token)]


class SendOnCommit:
    """The data manager that sends the emails claimed in a transaction
    after it commits, in a transaction of its own, as
    trytond.sendmail.SMTPDataManager sends its messages

    What cannot be sent then stays in the outbox for the next attempts, as
    any claim; a process that dies before leaves the claim to time out."""

    def __init__(self):
        self.tokens = []

    def __eq__(self, other):
        # One per transaction
        if not isinstance(other, SendOnCommit):
            return NotImplemented
        return True

    __hash__ = object.__hash__

    def abort(self, transaction):
        self.tokens = []

    def tpc_begin(self, transaction):
        pass

    def commit(self, transaction):
        pass

    def tpc_vote(self, transaction):
        pass

    def tpc_finish(self, transaction):
        # A transaction may commit more than once: each claim goes once
        tokens, self.tokens = self.tokens, []
        for token in tokens:
            try:
                with transaction.new_transaction():
                    send(claimed(token))
            except Exception:
                logger.error("could not send the emails of claim %s, left "
                    "in the outbox", token, exc_info=True)

    def tpc_abort(self, transaction):
        self.tokens = []


def _connect():
    try:
        return get_smtp_server(pacing.smtp_uri(), strict=True)
    except Exception as exception:
        raise Unreachable(str(exception)) from exception


def _table():
    return Pool().get('ir.email').__table__()


def claim():
    """Claim a batch of due emails so that no other run sends them, and
    commit; return None when another run holds them"""
    table = _table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    sent = _sent_table()
    now = current_time()
    token = new_token()
    due = table.select(
        table.id,
        where=(((table.marketing_automation_status == 'pending')
                & ((table.marketing_automation_next_try == Null)
                    | (table.marketing_automation_next_try <= now)))
            | (_dead(table, now)
                # What a run that died had sent waits for settle_dead
                & ~table.id.in_(sent.select(sent.email)))),
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
                ['sending', token, now],
                where=table.id.in_(due)))
        transaction.commit()
    except backend.DatabaseOperationalError:
        # Another run is claiming: it sends them
        transaction.rollback()
        return None
    return token


def _dead(table, now):
    "The emails whose claim is so old that the run that claimed them died"
    return ((table.marketing_automation_status == 'sending')
        & (table.marketing_automation_next_try <= now - claim_timeout()))


def settle_dead():
    """Settle what the runs that died had sent, so that it is not sent
    again, and commit"""
    table = _table()
    sent = _sent_table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    try:
        cursor.execute(*sent.select(sent.email, where=sent.email.in_(
                    table.select(table.id,
                        where=_dead(table, current_time())))))
        settle([e for e, in cursor])
        transaction.commit()
    except backend.DatabaseOperationalError:
        # Another run is settling them
        transaction.rollback()


def claimed(claim):
    table = _table()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.select(
            table.id, table.marketing_automation_message,
            table.marketing_automation_attempts,
            where=(table.marketing_automation_claim == claim)
            & (table.marketing_automation_status == 'sending'),
            order_by=[table.id.asc]))
    return cursor.fetchall()


def send(emails, connection=None, delivered=None):
    """Send the claimed emails at the pace of the database, committing
    after each one, through connection or one of their own

    The addresses delivered are added to delivered, for the caller to tell
    bounce, or told at the end.

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
    own = connection is None
    if own:
        connection = pacing.Connection(_connect)
    tell = delivered is None
    if tell:
        delivered = []
    sent, go_on = 0, True
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
    if own:
        connection.close()
    settle([e for e, _, _ in emails])
    if tell:
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


def _sent_table():
    return Pool().get('marketing.automation.email.sent').__table__()


def _sent(email_id):
    "Record that the server accepted the email, to be settled (Sent)"
    sent = _sent_table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    cursor.execute(*sent.insert(
            [sent.email, sent.create_uid, sent.create_date],
            [[email_id, transaction.user, current_time()]]))


def settle(email_ids):
    "Mark as sent in ir_email the emails of email_ids that were accepted"
    table = _table()
    sent = _sent_table()
    cursor = Transaction().connection.cursor()
    for sub_ids in sliced(email_ids):
        accepted = reduce_ids(sent.email, sub_ids)
        cursor.execute(*table.update(
                [table.marketing_automation_status,
                    table.marketing_automation_message,
                    table.marketing_automation_claim,
                    table.marketing_automation_error,
                    table.marketing_automation_attempts,
                    table.marketing_automation_sent_at],
                ['sent', Null, Null, Null,
                    table.marketing_automation_attempts + 1,
                    sent.select(Max(sent.create_date),
                        where=sent.email == table.id)],
                where=table.id.in_(sent.select(sent.email, where=accepted))))
        cursor.execute(*sent.delete(where=accepted))


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
