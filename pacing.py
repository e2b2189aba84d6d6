# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The pace of the outbox: a send rate shared by every process of the
database, the SMTP connections and their timeout

The next free send time is kept in one row of the database. A sender
reserves the send times of its claim in one UPDATE that it commits at once,
then sends each email at its time: so the rate holds across all the
processes and workers, not for each one alone. A server that answers 421 or
454 slows every sender down for a while through the same row."""
import logging
import smtplib
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sql import Table
from sql.conditionals import Case, Greatest, Least
from sql.operators import Mul

import trytond.config as config
from trytond import backend
from trytond.transaction import Transaction

logger = logging.getLogger(__name__)

TABLE = 'marketing_automation_pacing'
# The SMTP answers of a server that asks to slow down
THROTTLING = {421, 454}
# The spacing of a back-off, in seconds, doubled at each throttling answer
MIN_BACKOFF, MAX_BACKOFF = 0.1, 10.0
BACKOFF_SPAN = 60
# The reservations of concurrent senders conflict on PostgreSQL
TRIES = 20


def rate():
    "Return the emails per second of the database, 0 for no limit"
    return max(config.getfloat('marketing', 'automation_rate', default=0), 0)


def spacing():
    "Return the seconds between two emails at the configured rate"
    return 1 / rate() if rate() else 0.


def messages_per_connection():
    "Return how many messages an SMTP connection sends, 0 for no limit"
    return config.getint(
        'marketing', 'automation_messages_per_connection', default=0)


def smtp_timeout():
    return config.getint('marketing', 'automation_smtp_timeout', default=30)


def smtp_uri():
    "Return [email] uri with a timeout: its own when it has one"
    uri = config.get('email', 'uri')
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if 'timeout' not in {k for k, _ in query}:
        query.append(('timeout', str(smtp_timeout())))
    return urlunsplit(parts._replace(query=urlencode(query)))


def claim_limit(size, timeout):
    """Return how many emails a claim may take so that they are sent well
    before its timeout (a timedelta), at the configured rate"""
    if rate():
        return max(min(size, int(rate() * timeout.total_seconds() / 4)), 1)
    return size


def throttling(exception):
    "Tell whether exception is the server asking to slow down"
    if isinstance(exception, smtplib.SMTPRecipientsRefused):
        codes = {c for c, _ in exception.recipients.values()}
        return bool(codes) and codes <= THROTTLING
    return (isinstance(exception, smtplib.SMTPResponseException)
        and exception.smtp_code in THROTTLING)


def timed_out(exception):
    "Tell whether exception comes from a timeout of the connection"
    while exception is not None:
        if isinstance(exception, TimeoutError):
            return True
        exception = exception.__cause__ or exception.__context__
    return False


def register():
    "Create the row of the pace when it is missing"
    table = Table(TABLE)
    cursor = Transaction().connection.cursor()
    # A table of no model: a model would need translated strings
    cursor.execute('CREATE TABLE IF NOT EXISTS "%s" ('
        'id INTEGER PRIMARY KEY, '
        'next_send DOUBLE PRECISION NOT NULL, '
        'backoff DOUBLE PRECISION NOT NULL, '
        'backoff_until DOUBLE PRECISION NOT NULL)' % TABLE)
    cursor.execute(*table.select(table.id))
    if not cursor.fetchone():
        cursor.execute(*table.insert(
                [table.id, table.next_send, table.backoff,
                    table.backoff_until],
                [[1, 0., 0., 0.]]))


def _step(table, now):
    "The spacing in effect: the rate's, or the back-off's while it lasts"
    base = spacing()
    return Case(
        (table.backoff_until > now, Greatest(table.backoff, base)),
        else_=base)


def _update(values):
    """Update the row with values(table, now), {column name: expression},
    and commit; return the next send time and the spacing as they are
    then, or None when the concurrent updates kept it from it"""
    table = Table(TABLE)
    transaction = Transaction()
    for _ in range(TRIES):
        now = time.time()
        columns = values(table, now)
        row = [table.next_send, _step(table, now)]
        returning = transaction.database.has_returning()
        cursor = transaction.connection.cursor()
        try:
            cursor.execute(*table.update(
                    [getattr(table, c) for c in columns],
                    list(columns.values()),
                    where=table.id == 1,
                    returning=row if returning else None))
            if not returning:
                # SQLite: the UPDATE holds the only write lock
                cursor.execute(*table.select(*row, where=table.id == 1))
            row = cursor.fetchone()
            transaction.commit()
        except backend.DatabaseOperationalError:
            # Another sender updated the row since our snapshot
            transaction.rollback()
            continue
        return row
    logger.warning("could not reserve send times: too many conflicts")


def reserve(count):
    """Reserve the send times of count emails for every process of the
    database, and commit; return them as Slots, or None when it could not"""
    def values(table, now):
        return {'next_send': Greatest(table.next_send, now)
            + Mul(count, _step(table, now))}
    row = _update(values)
    if row is None:
        return None
    next_send, step = row
    return Slots(next_send - count * step, step)


def slow_down():
    """Double the spacing of every sender for BACKOFF_SPAN seconds, and
    commit; return whether it can be doubled again"""
    def values(table, now):
        return {
            'backoff': Least(
                Greatest(Mul(2, _step(table, now)), MIN_BACKOFF),
                MAX_BACKOFF),
            'backoff_until': now + BACKOFF_SPAN,
            }
    row = _update(values)
    if row is None:
        return False
    _, step = row
    logger.warning(
        "the SMTP server asks to slow down: %.3f s between emails", step)
    return step < MAX_BACKOFF


def wait_until(moment):
    """Wait until moment, in seconds since the epoch

    The only wait of the module: a sender keeps to the send times it
    reserved, otherwise the rate would not hold across the processes."""
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


class Slots:
    "The send times reserved for a claim"
    __slots__ = ('start', 'step')

    def __init__(self, start, step):
        self.start, self.step = start, step

    def __getitem__(self, index):
        return self.start + index * self.step


class Connection:
    """An SMTP connection, opened when a message is sent and opened again
    after automation_messages_per_connection messages

    connect returns a connected smtplib.SMTP."""

    def __init__(self, connect):
        self._connect = connect
        self._server = None
        self._count = 0
        self._limit = messages_per_connection()

    def sendmail(self, sender, recipients, message):
        if self._server is not None and self._limit:
            if self._count >= self._limit:
                self.close()
        if self._server is None:
            self._server = self._connect()
            self._count = 0
        self._count += 1
        refused = self._server.sendmail(sender, recipients, message)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)

    def close(self):
        if self._server is not None:
            try:
                self._server.quit()
            except Exception:
                pass
            self._server = None

    def drop(self):
        "Forget the connection without a word: the server may hang"
        if self._server is not None:
            try:
                self._server.close()
            except Exception:
                pass
            self._server = None
