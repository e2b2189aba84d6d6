# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The changes of state of the record activities

Each transition is one UPDATE for the whole list, guarded by the states it
can come from, so concurrent runs are harmless; it sets the audit columns
and makes the ORM forget the rows it changed."""
from collections import defaultdict

from sql import Null

from trytond.pool import Pool
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .batch import sliced
from .marketing_automation import current_time


class Transitions:
    "The transitions of a record activity, on lists"
    __slots__ = ()

    @classmethod
    def do(cls, record_activities, at):
        "The activity ran for these records"
        cls._transition(record_activities, 'done', at=at, clear=['deferred'])

    @classmethod
    def defer(cls, deferred):
        """Keep waiting the record activities of deferred, a mapping to the
        reason and the date until which each one waits"""
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        by_reason = defaultdict(list)
        for record_activity, reason_at in deferred.items():
            by_reason[reason_at].append(record_activity.id)
        for (reason, at), ids in by_reason.items():
            for sub_ids in sliced(ids):
                cursor.execute(*table.update(
                        [table.deferred, table.at, table.write_uid,
                            table.write_date],
                        [reason, at, transaction.user, current_time()],
                        where=reduce_ids(table.id, sub_ids)
                        & (table.state == 'waiting')))
        if deferred:
            cls.forget(list(deferred))

    @classmethod
    def cancel(cls, record_activities, at=None):
        "The activity will not run for these records"
        cls._transition(record_activities, 'cancelled', at=at)

    @classmethod
    def fail(cls, record_activities, error, at=None):
        """The activity could not run, or its email could not be delivered:
        what follows it will not run either"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        cls._transition(record_activities, 'failed', at=at, error=error)
        by_activity = defaultdict(list)
        for record_activity in record_activities:
            by_activity[record_activity.activity.id].append(
                record_activity.record.id)
        for activity_id, record_ids in by_activity.items():
            children = Activity(activity_id).children
            if children:
                cls.cancel_waiting(record_ids, children)

    @classmethod
    def cancel_waiting(cls, record_ids, activities=None):
        """Cancel the waiting record activities of record_ids, only those of
        activities when given"""
        activity_ids = (
            list(map(int, activities)) if activities is not None else None)

        def waiting(sub_ids):
            def where(table):
                where = reduce_ids(table.record, sub_ids)
                if activity_ids is not None:
                    where &= table.activity.in_(activity_ids)
                return where
            return where
        # One statement by slice, without reading the ids first
        for sub_ids in sliced(sorted(map(int, record_ids))):
            cls._update_state(waiting(list(sub_ids)), 'cancelled')
        cls.forget()

    @classmethod
    def _transition(cls, record_activities, state, clear=(), **values):
        """Change to state the record activities that can go to it, with
        values and the columns of clear emptied, in one statement by
        slice"""
        for sub_ids in sliced(list(map(int, record_activities))):
            sub_ids = list(sub_ids)
            cls._update_state(
                lambda table: reduce_ids(table.id, sub_ids), state,
                clear=clear, **values)
        cls.forget(record_activities)

    @classmethod
    def _update_state(cls, where, state, clear=(), **values):
        """Change to state, with values and the columns of clear emptied,
        the record activities that where(table) selects and that can go
        to it"""
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        sources = [s for s, t in cls._transitions if t == state]
        values = {k: v for k, v in values.items() if v is not None}
        values.update(dict.fromkeys(clear, Null))
        values.update(
            state=state, write_uid=transaction.user,
            write_date=current_time())
        names = sorted(values)
        cursor.execute(*table.update(
                [getattr(table, n) for n in names],
                [values[n] for n in names],
                where=where(table) & table.state.in_(sources)))

    @classmethod
    def forget(cls, record_activities=None):
        """Forget what the transaction read of the record activities, or of
        their ids, all of them when none is given"""
        forget(cls.__name__, record_activities)


def forget(model, records=None):
    """Forget what the transaction read of the records of model, or of their
    ids, all of them when none is given, as their rows changed behind the
    ORM"""
    transaction = Transaction()
    transaction.counter += 1
    ids = None
    if records is not None:
        ids = list(map(int, records))
        for record in records:
            # Ids need no browse: it costs the square of their number
            if not isinstance(record, int):
                record._local_cache.pop(record.id, None)
    for cache in transaction.cache.values():
        if model in cache:
            if ids is None:
                cache[model].clear()
            else:
                for id_ in ids:
                    cache[model].pop(id_, None)
