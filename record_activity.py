# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
from collections import defaultdict

from sql import For, Literal, Null

import trytond.config as config
from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, ModelSQL, ModelView, Unique, Workflow, fields
from trytond.pool import Pool
from trytond.pyson import Eval, If
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import deferral, tree
from .batch import batch_size, sliced
from .exceptions import RetryError, RetryWarning
from .marketing_automation import current_time
from .mixin import companies, company_context


class RecordActivity(Workflow, ModelSQL, ModelView):
    """The state of one record for one activity

    Its state, its date and its flags change through the transitions and
    the events below, on lists of record activities."""
    __name__ = 'marketing.automation.record.activity'
    _email_states = {
        'invisible': Eval('activity_action') != 'send_email',
        }

    record = fields.Many2One(
        'marketing.automation.record', "Record",
        required=True, readonly=True, ondelete='CASCADE')
    activity = fields.Many2One(
        'marketing.automation.activity', "Activity",
        required=True, readonly=True, ondelete='CASCADE')
    activity_action = fields.Function(
        fields.Selection('get_activity_actions', "Activity Action"),
        'on_change_with_activity_action')
    at = fields.DateTime("At", readonly=True)
    email_opened = fields.Boolean(
        "Email Opened", readonly=True,
        states=_email_states)
    email_clicked = fields.Boolean(
        "Email Clicked", readonly=True,
        states=_email_states)
    email_opened_machine = fields.Boolean(
        "Email Opened by Machine", readonly=True,
        states=_email_states,
        help="The image was fetched by a privacy proxy, not by a person.")
    email_filtered = fields.Boolean(
        "Email Filtered", readonly=True,
        states=_email_states,
        help="A scanner, a prefetch or a too early click was ignored.")
    email_bounced = fields.Boolean(
        "Email Bounced", readonly=True,
        states=_email_states,
        help="The mail server refused the address for good, at once or in "
        "a delivery report.")
    email_complained = fields.Boolean(
        "Email Complained", readonly=True,
        states=_email_states,
        help="The recipient reported the email as spam.")
    # What the outbox tells of the delivery of the email
    email_status = fields.Function(fields.Selection([
                (None, ""),
                ('pending', "Pending"),
                ('sending', "Sending"),
                ('sent', "Sent"),
                ('failed', "Failed"),
                ], "Email Status", states=_email_states),
        'get_email_delivery')
    email_attempts = fields.Function(fields.Integer(
            "Email Attempts", states=_email_states),
        'get_email_delivery')
    email_error = fields.Function(fields.Text(
            "Email Error", states=_email_states),
        'get_email_delivery')
    email_next_try = fields.Function(fields.DateTime(
            "Email Next Try", states=_email_states),
        'get_email_delivery')
    state = fields.Selection([
            ('waiting', "Waiting"),
            ('done', "Done"),
            ('cancelled', "Cancelled"),
            ('failed', "Failed"),
            ], "State", required=True, readonly=True, sort=False)
    deferred = fields.Selection([
            (None, ""),
            ('window', "Sending Window"),
            ('frequency', "Frequency Cap"),
            ], "Deferred", readonly=True, sort=False,
        states={
            'invisible': ~Eval('deferred'),
            },
        help="Why the activity waits beyond its date: its email may go "
        "only when the scenario sends, or the party had its share of "
        "emails.")
    error = fields.Text(
        "Error", readonly=True,
        states={
            'invisible': ~Eval('error'),
            })
    del _email_states

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_constraints = [
            ('activity_record_unique', Unique(t, t.activity, t.record),
                'marketing_automation.msg_activity_record_unique'),
            ]
        cls._sql_indexes.update({
                # The due ones by batches in the order of the ids: the
                # primary key would walk every record activity done before
                Index(t, (t.id, Index.Range()), (t.at, Index.Range()),
                    where=t.state == 'waiting'),
                Index(t, (t.record, Index.Range())),
                # The reports and the trends by activity and period
                Index(t,
                    (t.activity, Index.Range()),
                    (t.at, Index.Range()),
                    where=t.state.in_(['done', 'failed'])),
                # The statistics of the days of the record activities tell
                # PostgreSQL how few rows the reports group by
                Index(t,
                    (t.activity, Index.Range()),
                    (fields.Date("Day").sql_cast(t.at), Index.Range())),
                # The few flagged ones that the figures of a scenario count
                Index(t,
                    (t.record, Index.Range()),
                    where=(t.email_bounced == Literal(True))
                    | (t.email_complained == Literal(True))
                    | (t.state == 'failed')),
                })
        cls._order.insert(0, ('at', 'DESC NULLS FIRST'))
        cls._transitions |= {
            ('waiting', 'done'),
            ('waiting', 'cancelled'),
            ('waiting', 'failed'),
            ('done', 'failed'),
            ('failed', 'waiting'),
            }
        cls._buttons.update({
                'retry': {
                    'invisible': Eval('state') != 'failed',
                    'depends': ['state'],
                    },
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
    def __register__(cls, module):
        super().__register__(module)
        Pool().get('ir.email').marketing_automation_link_record_activities()

    @classmethod
    def write(cls, *args):
        # A transition writes its state with its other values, which leaves
        # the write of Workflow.transition empty: ModelSQL would still run
        # three statements for it
        actions = iter(args)
        args = []
        for record_activities, values in zip(actions, actions):
            if record_activities:
                args.extend((record_activities, values))
        if args:
            super().write(*args)

    @classmethod
    def default_state(cls):
        return 'waiting'

    @staticmethod
    def _default_flag():
        return False
    default_email_opened = default_email_clicked = _default_flag
    default_email_opened_machine = default_email_filtered = _default_flag
    default_email_bounced = default_email_complained = _default_flag

    @classmethod
    def get_activity_actions(cls):
        return Pool().get(
            'marketing.automation.activity').get_parent_actions()

    @classmethod
    def get_email_delivery(cls, record_activities, names):
        pool = Pool()
        Email = pool.get('ir.email')
        return Email.marketing_automation_delivery(record_activities, names)

    @fields.depends('activity')
    def on_change_with_activity_action(self, name=None):
        if self.activity:
            return self.activity.action

    def get_rec_name(self, name):
        return '%s @ %s' % (
            self.activity.rec_name, self.record.rec_name)

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
        """Run the due record activities by batches, then send their emails

        All are due whatever the company of the context: each one is run in
        the company of its record."""
        pool = Pool()
        Email = pool.get('ir.email')
        Scenario = pool.get('marketing.automation.scenario')
        transaction = Transaction()
        has_worker = config.getboolean('queue', 'worker', default=False)
        # Nothing more goes to the records that met the goal
        Scenario.check_goals()
        transaction.commit()
        for record_activities in cls.due():
            if has_worker:
                with transaction.set_context(
                        queue_batch=len(record_activities)):
                    cls.__queue__.run(record_activities)
            else:
                try:
                    cls.run(record_activities)
                except backend.DatabaseOperationalError:
                    # Another run has taken this batch
                    transaction.rollback()
                    continue
                # Each batch is kept even if a later one fails
                transaction.commit()
        # Also for the retries when nothing new was due
        Email.marketing_automation_send()

    @classmethod
    def due(cls):
        "Yield by batches the due record activities of running scenarios"
        now = current_time()
        last = 0
        while True:
            record_activities = cls.search([
                    ('state', '=', 'waiting'),
                    ('at', '<=', now),
                    ('id', '>', last),
                    ('record.blocked', '=', False),
                    ('record.scenario.state', '=', 'running'),
                    ], order=[('id', 'ASC')], limit=batch_size())
            if not record_activities:
                break
            last = record_activities[-1].id
            yield record_activities

    @classmethod
    def run(cls, record_activities):
        """Run the due record activities, each one isolated from the others,
        and move the tree on"""
        transaction = Transaction()
        now = current_time()
        record_activities = _lock_waiting(cls, record_activities)
        by_activity = defaultdict(list)
        for record_activity, company in _companies(record_activities).items():
            by_activity[record_activity.activity, company].append(
                record_activity)

        done, cancelled, failed = [], [], defaultdict(list)
        deferred = {}
        for (activity, company), activities in by_activity.items():
            # Each record is read, checked and rendered in its company,
            # whatever the company of the run
            with transaction.set_context(company_context(company)):
                if company is not None:
                    activities = cls.browse([ra.id for ra in activities])
                    activity = activities[0].activity
                due, errors = activity.filter_due(activities)
                # Sets: a batch is hundreds of record activities
                kept = set(due) | set(errors)
                cancelled.extend(ra for ra in activities if ra not in kept)
                due, waits = deferral.hold_back(activity, due, now)
                deferred.update(waits)
                if due and activity.action:
                    errors.update(getattr(
                            activity, 'execute_' + activity.action)(due)
                        or {})
            done.extend(ra for ra in due if ra not in errors)
            for record_activity, error in errors.items():
                failed[error].append(record_activity)

        # Before the transitions, whose writes make the record activities
        # read again
        tree.schedule_children(done, now)
        tree.cancel_siblings(done)
        cls.do(done, at=now)
        cls.cancel(cancelled, at=now)
        cls.defer(deferred)
        for error, activities in failed.items():
            cls.fail(activities, error, at=now)

    @classmethod
    @Workflow.transition('done')
    def do(cls, record_activities, at=None):
        "The activity ran for these records"
        if record_activities:
            cls.write(record_activities, {
                    'state': 'done',
                    'at': at or current_time(),
                    'deferred': None,
                    })

    @classmethod
    @Workflow.transition('cancelled')
    def cancel(cls, record_activities, at=None):
        "The activity will not run for these records"
        if record_activities:
            values = {'state': 'cancelled'}
            if at is not None:
                values['at'] = at
            cls.write(record_activities, values)

    @classmethod
    @Workflow.transition('failed')
    def fail(cls, record_activities, error, at=None):
        """The activity could not run, or its email could not be delivered:
        what follows it will not run either"""
        if not record_activities:
            return
        values = {'state': 'failed', 'error': error}
        if at is not None:
            values['at'] = at
        cls.write(record_activities, values)
        by_activity = defaultdict(list)
        for record_activity in record_activities:
            by_activity[record_activity.activity].append(
                record_activity.record)
        for activity, records in by_activity.items():
            if activity.children:
                cls.cancel_waiting(records, activity.children)

    @classmethod
    @ModelView.button
    def retry(cls, record_activities):
        "Run the failed record activities again at the next run"
        cls.retry_failures(record_activities)

    @classmethod
    def retry_failures(cls, record_activities):
        """Make the failed record activities due now, once the cause is
        fixed, and return them

        Those that may not run again are left out, with a warning that
        says how many; when none may, the retry is refused."""
        pool = Pool()
        Warning = pool.get('res.user.warning')
        failed = [ra for ra in record_activities if ra.state == 'failed']
        retried = cls._retryable(failed)
        if failed and not retried:
            raise RetryError(gettext(
                    'marketing_automation.msg_retry_none',
                    count=len(failed)))
        skipped = len(failed) - len(retried)
        if skipped:
            key = Warning.format('marketing_automation.retry', failed)
            if Warning.check(key):
                raise RetryWarning(key, gettext(
                        'marketing_automation.msg_retry_skipped',
                        skipped=skipped, count=len(failed)))
        cls.wait_again(retried)
        return retried

    @classmethod
    def _retryable(cls, record_activities):
        """Return those of the failed record activities that may run again:
        their record is neither blocked nor converted, their scenario runs,
        and the record did not go on with the children of their activity
        (a delivery report may fail an email after they ran)"""
        kept = [ra for ra in record_activities
            if not ra.record.blocked
            and not ra.record.converted
            and ra.record.scenario.state == 'running']
        went_on = cls._of_children(kept, ['done', 'failed'])
        return [ra for ra in kept if ra not in went_on]

    @classmethod
    def _of_children(cls, record_activities, states):
        """Return the record activities in states of the children of the
        activity of each record activity, for its record"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        parents = {}
        for record_activity in record_activities:
            for child in Activity.children_events(
                    record_activity.activity.id):
                parents[record_activity.record.id, child.id] = (
                    record_activity)
        result = defaultdict(list)
        children = sorted({c for _, c in parents})
        for record_ids in sliced(sorted({r for r, _ in parents})):
            for child in cls.search([
                        ('record', 'in', list(record_ids)),
                        ('activity', 'in', children),
                        ('state', 'in', states),
                        ], order=[]):
                parent = parents.get((child.record.id, child.activity.id))
                if parent is not None:
                    result[parent].append(child)
        return result

    @classmethod
    @Workflow.transition('waiting')
    def wait_again(cls, record_activities):
        """Make the failed record activities due now

        The record activities of their children that the failure cancelled
        never ran: they go, and come again when the retried ones run."""
        if not record_activities:
            return
        cancelled = cls._of_children(
            record_activities, ['waiting', 'cancelled'])
        cls.delete([c for cs in cancelled.values() for c in cs])
        cls.write(record_activities, {
                'state': 'waiting',
                'at': current_time(),
                'error': None,
                'deferred': None,
                })

    @classmethod
    def defer(cls, deferred):
        """Keep waiting the record activities of deferred, a mapping to the
        reason and the date until which each one waits"""
        by_reason = defaultdict(list)
        for record_activity, reason_at in deferred.items():
            by_reason[reason_at].append(record_activity)
        to_write = []
        for (reason, at), record_activities in by_reason.items():
            to_write.extend((record_activities, {
                        'deferred': reason,
                        'at': at,
                        }))
        if to_write:
            cls.write(*to_write)

    @classmethod
    def cancel_waiting(cls, records, activities=None):
        """Cancel the waiting record activities of the records, only those
        of activities when given"""
        if not records:
            return
        domain = [
            ('record', 'in', sorted(map(int, records))),
            ('state', '=', 'waiting'),
            ]
        if activities is not None:
            domain.append(('activity', 'in', sorted(map(int, activities))))
        cls.cancel(cls.search(domain, order=[]))

    @classmethod
    @ModelView.button
    def on_email_opened(cls, record_activities, at=None):
        "Record that the email was opened and move the tree on"
        cls.record_email_events(
            cls._events(record_activities), opened=True, at=at)

    @classmethod
    @ModelView.button
    def on_email_clicked(cls, record_activities, at=None):
        "Record that a link was clicked; a click implies an open"
        cls.record_email_events(
            cls._events(record_activities), opened=True, clicked=True,
            at=at)

    @classmethod
    def _events(cls, record_activities):
        return [tree.Event(ra.id, ra.activity.id, ra.record.id,
                ra.email_opened, ra.email_clicked)
            for ra in record_activities if ra.state == 'done']

    @classmethod
    def record_email_events(
            cls, events, opened=False, clicked=False, at=None, route=False):
        """Record the events on the record activities done that did not have
        them, as tree.Event tuples, and move the tree on

        route is for a tracked request: see set_email_flags."""
        if at is None:
            at = current_time()
        changes = []
        if opened:
            changes.append(
                ('email_opened', [e for e in events if not e.opened]))
        if clicked:
            changes.append(
                ('email_clicked', [e for e in events if not e.clicked]))
        # One write for the events that set the same flags
        flags = defaultdict(list)
        for event in events:
            names = tuple(n for n, h in changes if event in h)
            if names:
                flags[names].append(event.id)
        for names, ids in flags.items():
            cls.set_email_flags(cls.browse(ids), *names, route=route)
        for name, happened in changes:
            if happened:
                tree.move_on(happened, name, at, route=route)

    @classmethod
    def on_event(cls, record_activities, event, at=None):
        """Move the tree on after event of the action of the record
        activities done, for actions other than send_email: the children
        that wait for it become due and their negative siblings are
        cancelled; a repeat changes nothing"""
        if at is None:
            at = current_time()
        tree.move_on(cls._events(record_activities), event, at)

    @classmethod
    def set_email_flags(cls, record_activities, *names, route=False):
        """Set the flags names on the record activities that miss one: an
        open, a click, a machine open, a filtered event, a bounce or a
        complaint

        A tracked request (route) sets them with one statement, which the
        ORM would make three; its transaction ends with the request, so no
        cache can keep the old flags."""
        if not record_activities:
            return
        if route:
            _set_flags(cls, list(map(int, record_activities)), names)
            return
        record_activities = [ra for ra in record_activities
            if not all(getattr(ra, n) for n in names)]
        if record_activities:
            cls.write(record_activities, dict.fromkeys(names, True))


def _companies(record_activities):
    """Return the company of the record of each record activity, None for
    a model without company, with one query by model"""
    pool = Pool()
    by_model = defaultdict(set)
    for record_activity in record_activities:
        resource = record_activity.record.record
        if resource is not None and resource.id is not None:
            by_model[resource.__name__].add(resource.id)
    of = {model: companies(pool.get(model), ids)
        for model, ids in by_model.items()}
    result = {}
    for record_activity in record_activities:
        resource = record_activity.record.record
        result[record_activity] = (
            of[resource.__name__].get(resource.id)
            if resource is not None and resource.id is not None else None)
    return result


def _set_flags(RecordActivity, ids, names):
    "Set the flags names on the record activities of ids that miss one"
    table = RecordActivity.__table__()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    columns = [getattr(table, n) for n in names]
    unset = Literal(False)
    for column in columns:
        unset |= column == Literal(False)
    for sub_ids in sliced(ids):
        cursor.execute(*table.update(
                columns + [table.write_uid, table.write_date],
                [Literal(True)] * len(columns)
                + [transaction.user, current_time()],
                where=reduce_ids(table.id, sub_ids) & unset))


def _lock_waiting(RecordActivity, record_activities):
    """Lock the record activities which are still due and return them

    A concurrent run that executed them already makes this run fail and
    retry, so no email is composed twice. A worker may run them later than
    they were selected: those of a record blocked or of a scenario stopped
    since are left."""
    pool = Pool()
    Record = pool.get('marketing.automation.record')
    Scenario = pool.get('marketing.automation.scenario')
    table = RecordActivity.__table__()
    record = Record.__table__()
    scenario = Scenario.__table__()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    now = current_time()
    due = set()
    # Subqueries, so that only the record activities are locked
    running = record.select(record.id,
        where=((record.blocked == Null) | (record.blocked == Literal(False)))
        & record.scenario.in_(scenario.select(
                scenario.id, where=scenario.state == 'running')))
    for sub_ids in sliced(list(map(int, record_activities))):
        query = table.select(table.id,
            where=reduce_ids(table.id, sub_ids)
            & (table.state == 'waiting')
            & (table.at <= now)
            & table.record.in_(running))
        if transaction.database.has_select_for():
            query.for_ = For('UPDATE')
        cursor.execute(*query)
        due.update(i for i, in cursor)
    return [ra for ra in record_activities if ra.id in due]
