# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The pace of the outbox: a send rate shared by every process of the
database, the SMTP connections and their timeout

The next free send time is kept in one row of the database. A sender
reserves the send times of its claim in one UPDATE that it commits at once,
then sends each email at its time: so the rate holds across all the
processes and workers, not for each one alone. A server that answers 421 or
454 slows every sender down through the same row; the emails it accepts
then speed them up again, and the send times of the emails released unsent
are given back, so that no back-off outlasts its cause."""
import logging
import smtplib
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sql.conditionals import Case, Greatest, Least
from sql.operators import Mul

import trytond.config as config
from trytond import backend
from trytond.model import ModelSQL, fields
from trytond.pool import Pool
from trytond.transaction import Transaction

logger = logging.getLogger(__name__)

# The SMTP answers of a server that asks to slow down
THROTTLING = {421, 454}
# The spacing of a back-off, in seconds, doubled at each throttling answer
# and halved at each accepted email; it ends below MIN_BACKOFF
MIN_BACKOFF, MAX_BACKOFF = 0.1, 10.0
# How long a back-off lasts after the last throttling answer, without any
# accepted email
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


class Pace(ModelSQL):
    """The pace of the outbox, in one row: the next free send time and the
    back-off of the server, in seconds since the epoch

    Changed only by compare-and-set UPDATEs (_update): the ORM cannot
    reserve times against concurrent senders."""
    __name__ = 'marketing.automation.pacing'

    next_send = fields.Float("Next Send", required=True)
    backoff = fields.Float("Back-off", required=True)
    backoff_until = fields.Float("Back-off Until", required=True)

    @classmethod
    def __register__(cls, module):
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        columns = [table.id, table.next_send, table.backoff,
            table.backoff_until]
        rows = rows_of_table_without_model(cls, table, columns)
        super().__register__(module)
        cursor.execute(*table.select(table.id, where=table.id == 1))
        if not cursor.fetchone():
            cursor.execute(*table.insert(
                    columns, rows or [[1, 0., 0., 0.]]))


def rows_of_table_without_model(Model, table, columns):
    """Return the rows of columns of table, the table of Model, when it was
    created before Model, without a model, and drop it for Model to create
    it"""
    pool = Pool()
    IrModel = pool.get('ir.model')
    ir_model = IrModel.__table__()
    TableHandler = backend.TableHandler
    cursor = Transaction().connection.cursor()
    if not TableHandler.table_exist(Model._table):
        return []
    cursor.execute(*ir_model.select(
            ir_model.id, where=ir_model.name == Model.__name__))
    if cursor.fetchone():
        return []
    cursor.execute(*table.select(*columns))
    rows = [list(r) for r in cursor]
    TableHandler.drop_table(Model.__name__, Model._table)
    return rows


def _backing_off(table, now):
    "Whether a back-off slower than the rate is in effect"
    return (table.backoff_until > now) & (table.backoff > spacing())


def _step(table, now):
    "The spacing in effect: the rate's, or the back-off's while it lasts"
    base = spacing()
    return Case(
        (table.backoff_until > now, Greatest(table.backoff, base)),
        else_=base)


def _update(values, returning=None, where=None):
    """Update the row with values(table, now), {column name: expression},
    where where(table) holds, and commit; return the next send time and
    the spacing as they are then, followed by returning(table, now), a
    list of expressions; or None when the row was not updated

    It commits or rolls back the transaction: the caller commits its own
    changes first."""
    table = Pool().get('marketing.automation.pacing').__table__()
    transaction = Transaction()
    condition = table.id == 1
    if where is not None:
        condition &= where(table)
    for _ in range(TRIES):
        now = time.time()
        columns = values(table, now)
        row = [table.next_send, _step(table, now)]
        if returning is not None:
            row += returning(table, now)
        has_returning = transaction.database.has_returning()
        cursor = transaction.connection.cursor()
        try:
            cursor.execute(*table.update(
                    [getattr(table, c) for c in columns],
                    list(columns.values()),
                    where=condition,
                    returning=row if has_returning else None))
            if has_returning:
                row = cursor.fetchone()
            elif cursor.rowcount:
                # SQLite: the UPDATE holds the only write lock
                cursor.execute(*table.select(*row, where=table.id == 1))
                row = cursor.fetchone()
            else:
                row = None
            transaction.commit()
        except backend.DatabaseOperationalError:
            # Another sender updated the row since our snapshot
            transaction.rollback()
            if where is not None:
                # The row is no longer what the condition expects
                return None
            continue
        return row
    logger.warning("could not update the pace: too many conflicts")


def reserve(count):
    """Reserve the send times of count emails for every process of the
    database, and commit; return them as Slots, or None when it could not

    While a back-off is in effect, only the time of the next email is
    reserved: the spacing changes at the next answer of the server, and a
    claim must not keep the slow spacing after the back-off has ended."""
    def reserved(table, now):
        return Case((_backing_off(table, now), 1), else_=count)

    def values(table, now):
        return {'next_send': Greatest(table.next_send, now)
            + Mul(reserved(table, now), _step(table, now))}

    row = _update(values, lambda t, n: [reserved(t, n)])
    if row is None:
        return None
    end, step, reserved_ = row
    return Slots(end - reserved_ * step, step, int(reserved_), end)


def give_back(slots, index):
    """Give back the send times of slots from index on, and commit

    The next send time moves back to that of slots[index] when no sender
    reserved after slots: otherwise the times stay a gap in the pace."""
    if index >= len(slots):
        return
    _update(lambda table, now: {'next_send': slots[index]},
        where=lambda table: table.next_send == slots.end)


def slow_down(step):
    """Double the spacing of every sender for BACKOFF_SPAN seconds, from
    step, the spacing of the email that the server refused, and commit;
    return whether it can be doubled again

    The refusals of emails sent at the same spacing double it once. The
    next email goes no sooner than the new spacing."""
    def backoff(table, now):
        return Least(
            Greatest(_step(table, now), 2 * step, MIN_BACKOFF), MAX_BACKOFF)

    def values(table, now):
        return {
            'backoff': backoff(table, now),
            'backoff_until': now + BACKOFF_SPAN,
            'next_send': Greatest(table.next_send, backoff(table, now) + now),
            }
    row = _update(values)
    if row is None:
        return False
    _, step = row
    logger.warning(
        "the SMTP server asks to slow down: %.3f s between emails", step)
    return step < MAX_BACKOFF


def accepted(slots, index):
    """Tell that the server accepted the email sent at slots[index]: when
    it was sent during a back-off, halve the spacing, end the back-off
    below MIN_BACKOFF, and commit

    The time reserved after the email is shortened to the new spacing when
    no sender reserved after slots. So the pace comes back to the rate
    within a few emails once the server accepts again, instead of keeping
    the back-off for BACKOFF_SPAN."""
    if slots.step <= spacing():
        return
    base = spacing()

    def values(table, now):
        backing_off = _backing_off(table, now)
        halved = table.backoff / 2
        ended = backing_off & (halved < MIN_BACKOFF)
        step = Case(
            (ended, base),
            (backing_off, Greatest(halved, base)),
            else_=base)
        return {
            'backoff': Case((backing_off, halved), else_=table.backoff),
            'backoff_until': Case((ended, 0.), else_=table.backoff_until),
            'next_send': Case(
                (table.next_send == slots.end,
                    Least(table.next_send, step + slots[index])),
                else_=table.next_send),
            }
    _update(values)


def wait_until(moment):
    """Wait until moment, in seconds since the epoch

    The only wait of the module: a sender keeps to the send times it
    reserved, otherwise the rate would not hold across the processes."""
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


class Slots:
    """The send times reserved for a claim: count of them from start, step
    apart; end is the next send time that the reservation left"""
    __slots__ = ('start', 'step', 'count', 'end')

    def __init__(self, start, step, count, end):
        self.start, self.step, self.count, self.end = start, step, count, end

    def __len__(self):
        return self.count

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
