# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
import datetime as dt
from collections import defaultdict, namedtuple

from sql import For, Literal, Null

import trytond.config as config
from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, ModelSQL, ModelView, Unique, Workflow, fields
from trytond.pool import Pool
from trytond.pyson import Eval, If
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .marketing_automation import batch_size, current_time, sliced, sliced_rows

Target = namedtuple(
    'Target', ['id', 'activity', 'record', 'opened', 'clicked'])


class RecordActivity(Workflow, ModelSQL, ModelView):
    __name__ = 'marketing.automation.record.activity'
    _email_states = {
        'invisible': Eval('activity_action') != 'send_email',
        }

    record = fields.Many2One(
        'marketing.automation.record', "Record",
        required=True, ondelete='CASCADE')
    activity = fields.Many2One(
        'marketing.automation.activity', "Activity",
        required=True, ondelete='CASCADE')
    activity_action = fields.Function(
        fields.Selection('get_activity_actions', "Activity Action"),
        'on_change_with_activity_action')
    at = fields.DateTime("At")
    email_opened = fields.Boolean(
        "Email Opened",
        states=_email_states)
    email_clicked = fields.Boolean(
        "Email Clicked",
        states=_email_states)
    email_opened_machine = fields.Boolean(
        "Email Opened by Machine", readonly=True,
        states=_email_states,
        help="The image was fetched by a privacy proxy, not by a person.")
    email_filtered = fields.Boolean(
        "Email Filtered", readonly=True,
        states=_email_states,
        help="A scanner, a prefetch or a too early click was ignored.")
    state = fields.Selection([
            ('waiting', "Waiting"),
            ('done', "Done"),
            ('cancelled', "Cancelled"),
            ('failed', "Failed"),
            ], "State", required=True, readonly=True, sort=False)
    error = fields.Text(
        "Error", readonly=True,
        states={
            'invisible': ~Eval('error'),
            })
    email_status = fields.Function(fields.Selection([
                (None, ""),
                ('pending', "Pending"),
                ('sending', "Sending"),
                ('sent', "Sent"),
                ('failed', "Failed"),
                ], "Email Status",
            states=_email_states),
        'get_email_delivery')
    email_attempts = fields.Function(fields.Integer(
            "Email Attempts",
            states=_email_states),
        'get_email_delivery')
    email_error = fields.Function(fields.Text(
            "Email Error",
            states=_email_states),
        'get_email_delivery')
    email_next_try = fields.Function(fields.DateTime(
            "Email Next Try",
            states=_email_states),
        'get_email_delivery')
    del _email_states

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_constraints = [
            ('activity_record_unique', Unique(t, t.activity, t.record),
                'marketing_automation.msg_record_activity_unique'),
            ]
        cls._sql_indexes.update({
                Index(t,
                    (t.state, Index.Equality(cardinality='low')),
                    (t.at, Index.Range()),
                    where=t.state == 'waiting'),
                Index(t, (t.record, Index.Range())),
                })
        cls._order.insert(0, ('at', 'DESC NULLS FIRST'))
        cls._transitions |= {
            ('waiting', 'done'),
            ('waiting', 'cancelled'),
            ('waiting', 'failed'),
            ('done', 'failed'),
            }
        cls._buttons.update({
                'on_email_opened': {
                    'invisible': ((Eval('state') != 'done')
                        | Eval('email_opened', True)
                        | (Eval('activity_action') != 'send_email')),
                    'depends': ['state', 'email_opened', 'activity_action'],
                    },
                'on_email_clicked': {
                    'invisible': ((Eval('state') != 'done')
                        | Eval('email_clicked', True)
                        | (Eval('activity_action') != 'send_email')),
                    'depends': ['state', 'email_clicked', 'activity_action'],
                    },
                })

    @classmethod
    def default_state(cls):
        return 'waiting'

    @classmethod
    def default_email_opened(cls):
        return False

    @classmethod
    def default_email_clicked(cls):
        return False

    @classmethod
    def default_email_opened_machine(cls):
        return False

    @classmethod
    def default_email_filtered(cls):
        return False

    @classmethod
    def get_activity_actions(cls):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        return Activity.get_parent_actions()

    @fields.depends('activity')
    def on_change_with_activity_action(self, name=None):
        if self.activity:
            return self.activity.action

    def get_rec_name(self, name):
        return '%s @ %s' % (
            self.activity.rec_name, self.record.rec_name)

    @classmethod
    def get_email_delivery(cls, record_activities, names):
        pool = Pool()
        Email = pool.get('ir.email')
        return Email.marketing_automation_delivery(record_activities, names)

    @classmethod
    def view_attributes(cls):
        return super().view_attributes() + [
            ('/tree', 'visual', If(Eval('state') == 'failed', 'danger',
                    If(Eval('state') == 'cancelled', 'muted', ''))),
            ('//group[@id="email"]', 'states', {
                    'invisible': Eval('activity_action') != 'send_email',
                    }),
            ]

    @classmethod
    def process(cls):
        "Execute the due record activities, then deliver their emails"
        pool = Pool()
        Email = pool.get('ir.email')
        transaction = Transaction()
        has_worker = config.getboolean('queue', 'worker', default=False)
        for record_activities in cls._due_batches():
            if has_worker:
                with transaction.set_context(
                        queue_batch=len(record_activities)):
                    cls.__queue__.execute(record_activities)
            else:
                try:
                    cls.execute(record_activities)
                except backend.DatabaseOperationalError:
                    # Another run has taken this batch
                    transaction.rollback()
                    continue
                # Each batch is kept even if a later one fails
                transaction.commit()
        if has_worker:
            # Also for the retries when nothing new was due
            Email.marketing_automation_queue_delivery()
        else:
            cls.deliver()

    @classmethod
    def deliver(cls):
        "Send the emails waiting in the outbox"
        pool = Pool()
        Email = pool.get('ir.email')
        Email.marketing_automation_deliver()

    @classmethod
    def _due_batches(cls):
        "Yield by batches the due record activities of running scenarios"
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        Scenario = pool.get('marketing.automation.scenario')
        record_activity = cls.__table__()
        record = Record.__table__()
        scenario = Scenario.__table__()
        cursor = Transaction().connection.cursor()
        now = current_time()

        last = 0
        while True:
            cursor.execute(*record_activity
                .join(record, condition=record_activity.record == record.id)
                .join(scenario, condition=record.scenario == scenario.id)
                .select(record_activity.id,
                    where=(record_activity.state == 'waiting')
                    & (record_activity.at != Null)
                    & (record_activity.at <= now)
                    & (record_activity.id > last)
                    & (record.blocked == Literal(False))
                    & (scenario.state == 'running'),
                    order_by=[record_activity.id.asc],
                    limit=batch_size()))
            ids = [i for i, in cursor]
            if not ids:
                break
            last = ids[-1]
            yield cls.browse(ids)

    @classmethod
    def execute(cls, record_activities):
        "Run the due record activities, each one isolated from the others"
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Email = pool.get('ir.email')
        now = current_time()

        record_activities = cls._still_due(cls._lock(record_activities))
        by_activity = defaultdict(list)
        for record_activity in record_activities:
            by_activity[record_activity.activity].append(record_activity)

        done, cancelled, failed = [], [], defaultdict(list)
        for activity, activities in by_activity.items():
            due = []
            for record_activity in activities:
                try:
                    if activity.is_due(record_activity):
                        due.append(record_activity)
                    else:
                        cancelled.append(record_activity)
                except Exception as exception:
                    failed[gettext(
                            'marketing_automation.msg_condition_failed',
                            activity=activity.rec_name,
                            exception=exception)].append(record_activity)
            errors = Activity.execute(activity, due) or {}
            for record_activity in due:
                if record_activity in errors:
                    failed[errors[record_activity]].append(record_activity)
                else:
                    done.append(record_activity)

        cls._mark(done, 'done', at=now)
        cls._mark(cancelled, 'cancelled', at=now)
        for error, activities in failed.items():
            cls._mark(activities, 'failed', at=now, error=error)
        cls.schedule_children(done, now)
        cls.cancel_siblings(done)
        if config.getboolean('queue', 'worker', default=False):
            # Let a worker send what this batch composed
            Email.marketing_automation_queue_delivery()

    @classmethod
    def _lock(cls, record_activities):
        """Lock the record activities which are still waiting and return them

        A concurrent run that executed them already makes this run fail and
        retry, so no email is composed twice."""
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        waiting = set()
        for sub_ids in sliced(list(map(int, record_activities))):
            query = table.select(table.id,
                where=reduce_ids(table.id, sub_ids)
                & (table.state == 'waiting'))
            if transaction.database.has_select_for():
                query.for_ = For('UPDATE')
            cursor.execute(*query)
            waiting.update(i for i, in cursor)
        return [ra for ra in record_activities if ra.id in waiting]

    @classmethod
    def _still_due(cls, record_activities):
        "Keep those which are still due when a worker runs them"
        now = current_time()
        return [ra for ra in record_activities
            if ra.state == 'waiting'
            and ra.at is not None and ra.at <= now
            and not ra.record.blocked
            and ra.record.scenario.state == 'running']

    @classmethod
    def _mark(cls, record_activities, state, at, error=None):
        """Change the state of record activities which are still waiting.

        The condition on the state makes concurrent runs harmless."""
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        transaction = Transaction()
        for sub_ids in sliced(list(map(int, record_activities))):
            columns = [table.state, table.at, table.write_uid,
                table.write_date]
            values = [state, at, transaction.user, at]
            if error is not None:
                columns.append(table.error)
                values.append(error)
            cursor.execute(*table.update(columns, values,
                    where=reduce_ids(table.id, sub_ids)
                    & (table.state == 'waiting')))

    @classmethod
    def schedule_children(cls, record_activities, now):
        """Create the record activities of the children of the activities
        that just ran"""
        rows = []
        for record_activity in record_activities:
            for child in record_activity.activity.children:
                if child.event and not child.negative:
                    # It waits for its event, so it has no date yet
                    at = None
                else:
                    at = now + (child.delay or dt.timedelta())
                rows.append((record_activity.record.id, child.id, at))
        cls.create_waiting(rows, now)

    @classmethod
    def create_waiting(cls, rows, now):
        """Create the waiting record activities of the (record, activity, at)
        rows

        The ORM would insert them one by one on SQLite."""
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        columns = [table.record, table.activity, table.at, table.state,
            table.email_opened, table.email_clicked,
            table.email_opened_machine, table.email_filtered,
            table.create_uid, table.create_date]
        values = [[record, activity, at, 'waiting', False, False, False,
                False, transaction.user, now]
            for record, activity, at in rows]
        for sub_values in sliced_rows(values, len(columns)):
            cursor.execute(*table.insert(columns, list(sub_values)))

    @classmethod
    def cancel_siblings(cls, record_activities):
        """Cancel the positive siblings of the negative activities that ran:
        their event did not happen in time"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        negatives = [ra for ra in record_activities if ra.activity.negative]
        if not negatives:
            return
        by_event = defaultdict(list)
        for record_activity in negatives:
            activity = record_activity.activity
            by_event[(str(activity.parent), activity.event)].append(
                record_activity.record.id)
        for (parent, event), record_ids in by_event.items():
            siblings = Activity.search([
                    ('parent', '=', parent),
                    ('event', '=', event),
                    ('negative', '=', False),
                    ])
            if siblings:
                cls._cancel(record_ids, siblings)

    @classmethod
    def _cancel(cls, record_ids, activities=None):
        """Cancel the waiting record activities of record_ids, only those of
        activities when given"""
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        now = current_time()
        where = table.state == 'waiting'
        if activities is not None:
            where &= table.activity.in_(list(map(int, activities)))
        for sub_ids in sliced(record_ids):
            cursor.execute(*table.update(
                    [table.state, table.write_date],
                    ['cancelled', now],
                    where=reduce_ids(table.record, sub_ids) & where))

    @classmethod
    def fail_delivery(cls, pairs, error):
        """Fail the record activities of the (activity, record) pairs whose
        email could not be delivered, and cancel what follows them"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        now = current_time()
        by_activity = defaultdict(list)
        for activity_id, record_id in pairs:
            if activity_id and record_id:
                by_activity[activity_id].append(record_id)
        for activity_id, record_ids in by_activity.items():
            for sub_ids in sliced(record_ids):
                cursor.execute(*table.update(
                        [table.state, table.error, table.write_date],
                        ['failed', error, now],
                        where=reduce_ids(table.record, sub_ids)
                        & (table.activity == activity_id)))
            children = Activity(activity_id).children
            if children:
                cls._cancel(record_ids, children)

    @classmethod
    def cancel_waiting(cls, records):
        "Cancel all the waiting record activities of the blocked records"
        cls._cancel(list(map(int, records)))

    @classmethod
    @ModelView.button
    def on_email_opened(cls, record_activities, at=None):
        "Record that the email was opened and move the tree on"
        cls.record_events(cls._targets(record_activities), opened=True, at=at)

    @classmethod
    @ModelView.button
    def on_email_clicked(cls, record_activities, at=None):
        "Record that a link was clicked; a click implies an open"
        cls.record_events(
            cls._targets(record_activities), opened=True, clicked=True,
            at=at)

    @classmethod
    def _targets(cls, record_activities):
        return [Target(ra.id, ra.activity.id, ra.record.id,
                ra.email_opened, ra.email_clicked)
            for ra in record_activities if ra.state == 'done']

    @classmethod
    def record_events(cls, targets, opened=False, clicked=False, at=None):
        """Record the events on the targets that did not have them and move
        the tree on

        The targets are record activities done, as Target tuples."""
        if at is None:
            at = current_time()
        events = []
        if opened:
            events.append(('email_opened',
                    [t for t in targets if not t.opened]))
        if clicked:
            events.append(('email_clicked',
                    [t for t in targets if not t.clicked]))
        for event, event_targets in events:
            if event_targets:
                cls._flag([t.id for t in event_targets], event)
        for event, event_targets in events:
            if event_targets:
                cls._move_on(event_targets, event, at)

    @classmethod
    def record_machine_open(cls, ids):
        """Record an open by a privacy proxy on the record activities of ids:
        it counts but moves nothing"""
        cls._flag(ids, 'email_opened_machine')

    @classmethod
    def record_filtered(cls, ids):
        """Record that an event on the record activities of ids was ignored
        as not coming from a person"""
        cls._flag(ids, 'email_filtered')

    @classmethod
    def _flag(cls, ids, name):
        "Set the flag name on the record activities of ids"
        if not ids:
            return
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        column = getattr(table, name)
        # A single statement per event, the ORM would read and check
        for sub_ids in sliced(ids):
            cursor.execute(*table.update(
                    [column, table.write_date],
                    [Literal(True), current_time()],
                    where=reduce_ids(table.id, sub_ids)
                    & (column == Literal(False))))

    @classmethod
    def _move_on(cls, targets, event, at):
        """Make the children waiting for event due and cancel their negative
        siblings"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        positives, negatives = defaultdict(set), defaultdict(set)
        for target in targets:
            for child in Activity.children_events(target.activity):
                if child.event != event:
                    continue
                if child.negative:
                    negatives[child.id].add(target.record)
                else:
                    positives[child].add(target.record)
        for child, record_ids in positives.items():
            for sub_ids in sliced(sorted(record_ids)):
                cursor.execute(*table.update(
                        [table.at, table.write_date],
                        [at + dt.timedelta(seconds=child.delay), at],
                        where=reduce_ids(table.record, sub_ids)
                        & (table.activity == child.id)
                        & (table.state == 'waiting')
                        & (table.at == Null)))
        for child_id, record_ids in negatives.items():
            cls._cancel(sorted(record_ids), [child_id])
