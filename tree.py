# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What runs after what: the record activities of the children of the
activity tree

The tree moves on at enrolment, when an activity runs and when an event
happens. Each move is a constant number of statements for a whole batch."""
import datetime as dt
from collections import defaultdict, namedtuple

from sql import Literal, Null

from trytond.pool import Pool
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .batch import sliced, sliced_rows

# A record activity done whose email an event happened to
Event = namedtuple(
    'Event', ['id', 'activity', 'record', 'opened', 'clicked'])


def _table():
    return Pool().get('marketing.automation.record.activity').__table__()


def _waiting(table, now):
    "Return the columns of a new waiting record activity and their values"
    columns = [table.state,
        table.email_opened, table.email_clicked,
        table.email_opened_machine, table.email_filtered,
        table.email_bounced, table.email_complained,
        table.create_uid, table.create_date]
    return columns, ['waiting'] + [False] * 6 + [Transaction().user, now]


def create_waiting(rows, now):
    """Create the waiting record activities of the (record, activity, at)
    rows

    The ORM would insert them one by one on SQLite."""
    table = _table()
    cursor = Transaction().connection.cursor()
    columns, values = _waiting(table, now)
    columns = [table.record, table.activity, table.at] + columns
    values = [[record, activity, at] + values for record, activity, at in rows]
    for sub_values in sliced_rows(values, len(columns)):
        cursor.execute(*table.insert(columns, list(sub_values)))


def enrol(scenario_id, last, activities, now):
    """Schedule the root activities for the records just enrolled in the
    scenario: those of id greater than last

    Inserted from a select of the records: the values are the same for all
    of them. Return the number of record activities of each activity."""
    pool = Pool()
    Record = pool.get('marketing.automation.record')
    record = Record.__table__()
    where = (record.scenario == scenario_id) & (record.id > last)
    return [_schedule_for(record, where, activity, now)
        for activity in activities]


def _schedule_for(record, where, activity, now):
    """Create the waiting record activities of activity for the records
    where and return how many"""
    table = _table()
    cursor = Transaction().connection.cursor()
    columns, values = _waiting(table, now)
    columns = [table.record, table.activity, table.at] + columns
    at = now + (activity.delay or dt.timedelta())
    cursor.execute(*table.insert(columns, record.select(
                record.id, *[Literal(v) for v in [activity.id, at] + values],
                where=where)))
    return cursor.rowcount


def starts_on(activity):
    """Return what starts the delay of activity once its parent ran:
    'delay' at once, 'event' its event, or 'no_event' at once too but it
    runs only if its event did not happen by the end of the delay"""
    if not activity.event:
        return 'delay'
    return 'no_event' if activity.negative else 'event'


def waits_for_event(child):
    """Tell whether a child of an activity that ran waits for its event,
    with no date yet"""
    return starts_on(child) == 'event'


def moved_on(children, events):
    """Return the children that the events make due, those waiting for
    one of them, and those they cancel, the negative ones on them"""
    due = [c for c in children if c.event in events and not c.negative]
    cancelled = [c for c in children if c.event in events and c.negative]
    return due, cancelled


def timed_out(negatives, siblings):
    """Return the siblings that the negative activities cancel when they
    run: those waiting for the same event of the same parent"""
    ended = {(n.parent, n.event) for n in negatives if n.negative}
    return [s for s in siblings
        if not s.negative and (s.parent, s.event) in ended]


def schedule_children(record_activities, now):
    """Create the record activities of the children of the activities that
    just ran"""
    pool = Pool()
    Activity = pool.get('marketing.automation.activity')
    rows = []
    for record_activity in record_activities:
        record_id = record_activity.record.id
        # Cached by activity: reading each one's children costs more
        for child in Activity.children_events(record_activity.activity.id):
            if waits_for_event(child):
                at = None
            else:
                at = now + dt.timedelta(seconds=child.delay)
            rows.append((record_id, child.id, at))
    create_waiting(rows, now)


def cancel_siblings(record_activities):
    """Cancel the positive siblings of the negative activities that ran:
    their event did not happen in time"""
    pool = Pool()
    Activity = pool.get('marketing.automation.activity')
    RecordActivity = pool.get('marketing.automation.record.activity')
    by_parent = defaultdict(list)
    for record_activity in record_activities:
        activity = record_activity.activity
        if activity.negative:
            by_parent[str(activity.parent)].append(record_activity)
    for parent, negatives in by_parent.items():
        by_event = defaultdict(list)
        for sibling in timed_out(
                [n.activity for n in negatives],
                Activity.search([('parent', '=', parent)])):
            by_event[sibling.event].append(sibling)
        # One cancel by event, as the siblings on it end together
        for event, siblings in by_event.items():
            RecordActivity.cancel_waiting(
                [n.record.id for n in negatives
                    if n.activity.event == event],
                siblings)


def move_on(events, event, at, route=False):
    """Make the children waiting for event due and cancel their negative
    siblings

    route is for a tracked request: see _move_on_at_once."""
    pool = Pool()
    Activity = pool.get('marketing.automation.activity')
    RecordActivity = pool.get('marketing.automation.record.activity')
    positives, negatives = defaultdict(set), defaultdict(set)
    for happened in events:
        due, cancelled = moved_on(
            Activity.children_events(happened.activity), {event})
        for child in due:
            positives[child].add(happened.record)
        for child in cancelled:
            negatives[child.id].add(happened.record)
    if route:
        _move_on_at_once(positives, negatives, at)
        return
    if positives:
        waiting = RecordActivity.search([
                ('state', '=', 'waiting'),
                ('at', '=', None),
                ['OR'] + [[
                        ('activity', '=', child.id),
                        ('record', 'in', sorted(record_ids)),
                        ] for child, record_ids in positives.items()],
                ], order=[])
        delays = {child.id: child.delay for child in positives}
        due = defaultdict(list)
        for record_activity in waiting:
            delay = delays[record_activity.activity.id]
            due[at + dt.timedelta(seconds=delay)].append(record_activity)
        # Their date is all that changes: no transition
        to_write = []
        for child_at, record_activities in due.items():
            to_write.extend((record_activities, {'at': child_at}))
        if to_write:
            RecordActivity.write(*to_write)
    for child_id, record_ids in negatives.items():
        RecordActivity.cancel_waiting(record_ids, [child_id])


def _move_on_at_once(positives, negatives, at):
    """Move the tree on with one statement by child, for a tracked request

    The ORM would search and read before each write, and a tracked request
    must stay fast; its transaction ends with the request, so no cache can
    keep the old rows."""
    table = _table()
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    for child, record_ids in positives.items():
        for sub_ids in sliced(sorted(record_ids)):
            cursor.execute(*table.update(
                    [table.at, table.write_uid, table.write_date],
                    [at + dt.timedelta(seconds=child.delay),
                        transaction.user, at],
                    where=reduce_ids(table.record, sub_ids)
                    & (table.activity == child.id)
                    & (table.state == 'waiting')
                    & (table.at == Null)))
    for child_id, record_ids in negatives.items():
        for sub_ids in sliced(sorted(record_ids)):
            cursor.execute(*table.update(
                    [table.state, table.write_uid, table.write_date],
                    ['cancelled', transaction.user, at],
                    where=reduce_ids(table.record, sub_ids)
                    & (table.activity == child_id)
                    & (table.state == 'waiting')))


def reach_enrolled(activity, scenario_id, now):
    """Schedule the root activity, added to the scenario, for the records
    enrolled in it that are neither blocked nor converted and do not have
    it yet

    Inserted from a select of the records, as at enrolment."""
    pool = Pool()
    Record = pool.get('marketing.automation.record')
    record = Record.__table__()
    existing = _table()
    _schedule_for(record, (record.scenario == scenario_id)
        & ((record.blocked == Null) | (record.blocked == Literal(False)))
        & (record.converted == Null)
        & ~record.id.in_(existing.select(existing.record,
                where=existing.activity == activity.id)),
        activity, now)
