# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The extensions of trytond's ir models: the scheduled tasks, the relate
actions, and ir.email, the archive of sent emails that is also the outbox
(delivered by outbox.py) and takes the bounces and complaints of the
inbound_email module (read by feedback.py)"""
import datetime as dt

from sql import Null
from sql.conditionals import Coalesce
from sql.operators import Greater

import trytond.config as config
from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, fields
from trytond.pool import Pool, PoolMeta
from trytond.pyson import Bool, Eval
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import feedback, outbox
from .batch import batch_size, sliced, sliced_rows
from .email_ import html_to_text
from .marketing_automation import current_time

RETENTION_DAYS = 90
# The emails whose body the purge may drop: those of the module, done with
PURGEABLE = ['sent', 'failed']


def retention_days():
    """Return after how many days the bodies of the marketing emails sent
    are purged, 0 to keep them for ever"""
    value = config.get(
        'marketing', 'automation_retention_days', default=None)
    if value is None:
        return RETENTION_DAYS
    value = value.strip()
    return max(int(value), 0) if value else 0


def _purge_time(table):
    "When an email starts its retention: sent, or composed if given up"
    return Coalesce(table.marketing_automation_sent_at, table.create_date)


def _unpurged(table):
    """The emails of the module that have a body: those of the outbox too,
    a predicate with no parameter, which SQLite indexes"""
    return ((table.marketing_automation_status != Null)
        & (table.body != Null))


class Cron(metaclass=PoolMeta):
    __name__ = 'ir.cron'

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls.method.selection.extend([
                ('marketing.automation.scenario|trigger',
                    "Trigger Marketing Scenarios"),
                ('marketing.automation.record.activity|process',
                    "Process Marketing Activity"),
                ('ir.email|marketing_automation_purge',
                    "Purge Marketing Emails"),
                ])


class ActionKeyword(metaclass=PoolMeta):
    __name__ = 'ir.action.keyword'

    @classmethod
    def get_keyword(cls, keyword, value):
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        keywords = super().get_keyword(keyword, value)
        model, _ = value
        if keyword == 'form_relate' and model in _RELATED_EMAILS:
            # The archives by resource are always empty for these models,
            # which have their own relate action to their emails
            archives = ModelData.get_id('ir', 'act_email_form_relate')
            keywords = [k for k in keywords if k['id'] != archives]
        return keywords


_RELATED_EMAILS = {
    'marketing.automation.scenario',
    'marketing.automation.activity',
    'marketing.automation.record',
    }


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
    marketing_automation_party = fields.Many2One(
        'party.party', "Marketing Party", readonly=True,
        ondelete='SET NULL')
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
                # The claims walk the outbox in the order of the ids: the
                # primary key would walk the whole archive before it
                Index(t, (t.id, Index.Range()),
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
                # The frequency cap counts the emails of a party
                Index(t, (t.marketing_automation_party, Index.Range()),
                    where=t.marketing_automation_party != Null),
                # The purge walks the emails that still have a body, from
                # the oldest
                Index(t, (_purge_time(t), Index.Range()),
                    (t.id, Index.Range()), where=_unpurged(t)),
                })

    @classmethod
    def marketing_automation_link_record_activities(cls):
        """Link the emails sent by Tryton's own module, which knew only
        their record and activity, to their record activity

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
    def marketing_automation_send_on_commit(cls, rows):
        """Put the emails of rows in the outbox, to be sent once the
        transaction commits; return their ids

        For the test emails of a marketer: a wizard never commits. Those
        that cannot be sent then stay in the outbox for the next
        attempts."""
        return outbox.claim_on_commit(rows)

    @classmethod
    def marketing_automation_send(cls):
        """Send the outbox now, or ask the workers to when there are workers

        With workers, the queue holds one delivery task for each claim in
        the outbox, up to outbox.DELIVERY_TASKS: so that several workers
        share the sending of a batch or of a backlog, and not one alone.
        The tasks that no worker took yet count: each claims until nothing
        is due, and a task that finds nothing still costs a worker."""
        if config.getboolean('queue', 'worker', default=False):
            Queue = Pool().get('ir.queue')
            size = outbox.claim_size()
            emails = cls.search([
                    ('marketing_automation_status', 'in',
                        ['pending', 'sending']),
                    ], order=[('id', 'ASC')],
                limit=size * outbox.DELIVERY_TASKS)
            waiting = Queue.search_count([
                    ('dequeued_at', '=', None),
                    ('data.model', '=', cls.__name__),
                    ('data.method', '=', 'marketing_automation_deliver'),
                    ])
            # One email tells each task that there is work
            emails = emails[::size][waiting:]
            if emails:
                with Transaction().set_context(queue_batch=1):
                    cls.__queue__.marketing_automation_deliver(emails)
        else:
            cls.marketing_automation_deliver()

    @classmethod
    def marketing_automation_deliver(cls, emails=None):
        """Send the due emails of the outbox by claimed batches, committing
        each claim and each email sent: a task of its own

        emails only tells a worker that there is work: each task claims
        until nothing is due, and the tasks that run at the same time claim
        different emails."""
        return outbox.deliver()

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
                    & (table.marketing_automation_status != Null),
                    # A retried record activity has its new email last
                    order_by=[table.id.asc]))
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

    @classmethod
    def marketing_automation_purge(cls):
        """Drop the body and the MIME text of the marketing emails sent or
        given up more than automation_retention_days ago, by batches, each
        committed; return how many were purged

        The cron entry point. An email still in the outbox is never
        touched, and every other column is kept: the token, the links and
        the time of sending for the routes, the Message-ID and the record
        for the feedback, the party and the status for the frequency
        cap."""
        days = retention_days()
        if not days:
            return 0
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        now = current_time()
        at = _purge_time(table)
        # The walk reads the index alone, in its order: the outbox, which
        # it also holds, is left out by the update
        walk = _unpurged(table) & (at < now - dt.timedelta(days=days))
        due = walk & table.marketing_automation_status.in_(PURGEABLE)
        purged, last, size = 0, None, batch_size()
        while True:
            where = walk
            if last:
                # After the last batch, as a row value that the index
                # takes: no purged row is read again
                where &= Greater((at, table.id), last)
            cursor.execute(*table.select(table.id, at, where=where,
                    order_by=[at.asc, table.id.asc], limit=size))
            rows = cursor.fetchall()
            if not rows:
                break
            try:
                # The condition again: it drops only what is still due
                cursor.execute(*table.update(
                        [table.body, table.marketing_automation_message,
                            table.write_uid, table.write_date],
                        [Null, Null, transaction.user, now],
                        where=reduce_ids(table.id, [i for i, _ in rows])
                        & due))
            except backend.DatabaseOperationalError:
                # Another run purges the same emails: it goes on
                transaction.rollback()
                break
            purged += cursor.rowcount
            last_id, last_at = rows[-1]
            last = (last_at, last_id)
            # A short transaction per batch, however many are due
            transaction.commit()
        return purged

    def marketing_automation_purged(self):
        "Tell whether the body of the email was dropped by the purge"
        return (self.marketing_automation_status in PURGEABLE
            and not self.body)

    @classmethod
    def marketing_automation_feedback(cls, inbound_email, rule):
        """Act on the bounce or the complaint of inbound_email and return
        the email it is about, noting on it what was done or why nothing

        The action of the rules of the inbound_email module."""
        def note(text):
            inbound_email.marketing_automation_feedback = text
        try:
            report = feedback.parse(inbound_email.data)
        except Exception as exception:
            note(gettext('marketing_automation.msg_feedback_not_report',
                    exception=exception))
            return
        emails = cls.search([
                ('marketing_automation_token', 'in', sorted(report.tokens)),
                ('marketing_automation_record', '!=', None),
                ], limit=1) if report.tokens else []
        if not emails:
            note(gettext('marketing_automation.msg_feedback_unknown'))
            return
        email, = emails
        if report.kind == 'bounce':
            feedback.bounced(email, report)
            note(gettext('marketing_automation.msg_feedback_bounced',
                    reason=report.reason))
        elif report.kind == 'complaint':
            feedback.complained(email)
            note(gettext('marketing_automation.msg_feedback_complained',
                    reason=report.reason))
        else:
            note(gettext('marketing_automation.msg_feedback_delay'))
        return email
