# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The events of an email: open, click, machine open and filtered

A tracked request or a button records the event on the record activity and
moves the tree on, once: a repeat changes nothing and writes nothing."""
from collections import defaultdict

from sql import Literal

from trytond.model import ModelView
from trytond.pyson import Eval
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import tree
from .batch import sliced
from .marketing_automation import current_time


class EmailEvents:
    "The events of the email of a record activity"
    __slots__ = ()

    @classmethod
    def __setup__(cls):
        super().__setup__()
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
    @ModelView.button
    def on_email_opened(cls, record_activities, at=None):
        "Record that the email was opened and move the tree on"
        cls.record_events(cls._events(record_activities), opened=True, at=at)

    @classmethod
    @ModelView.button
    def on_email_clicked(cls, record_activities, at=None):
        "Record that a link was clicked; a click implies an open"
        cls.record_events(
            cls._events(record_activities), opened=True, clicked=True,
            at=at)

    @classmethod
    def _events(cls, record_activities):
        return [tree.Event(ra.id, ra.activity.id, ra.record.id,
                ra.email_opened, ra.email_clicked)
            for ra in record_activities if ra.state == 'done']

    @classmethod
    def record_events(cls, events, opened=False, clicked=False, at=None):
        """Record the events on the record activities done that did not have
        them, as tree.Event tuples, and move the tree on"""
        if at is None:
            at = current_time()
        changes = []
        if opened:
            changes.append(
                ('email_opened', [e for e in events if not e.opened]))
        if clicked:
            changes.append(
                ('email_clicked', [e for e in events if not e.clicked]))
        # One statement for the events that set the same flags
        flags = defaultdict(list)
        for event in events:
            names = tuple(n for n, h in changes if event in h)
            if names:
                flags[names].append(event.id)
        for names, ids in flags.items():
            cls.flag(ids, *names)
        for name, happened in changes:
            if happened:
                tree.move_on(happened, name, at)

    @classmethod
    def event_happened(cls, record_activities, event, at=None):
        """Move the tree on after event of the action of the record
        activities done, for actions other than send_email: the children
        that wait for it become due and their negative siblings are
        cancelled; a repeat changes nothing"""
        if at is None:
            at = current_time()
        tree.move_on(cls._events(record_activities), event, at)

    @classmethod
    def flag(cls, ids, *names):
        """Set the flags names on the record activities of ids: an open, a
        click, a machine open or a filtered event"""
        if not ids:
            return
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        columns = [getattr(table, n) for n in names]
        unset = Literal(False)
        for column in columns:
            unset |= column == Literal(False)
        # A single statement for all, the ORM would read and check
        for sub_ids in sliced(ids):
            cursor.execute(*table.update(
                    columns + [table.write_uid, table.write_date],
                    [Literal(True)] * len(columns)
                    + [transaction.user, current_time()],
                    where=reduce_ids(table.id, sub_ids) & unset))
        cls.forget(ids)
