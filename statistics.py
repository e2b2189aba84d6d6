# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"The statistics of the activities: what was done, opened and clicked"
from collections import defaultdict

from sql.aggregate import Count, Sum
from sql.conditionals import Case

from trytond.model import fields
from trytond.pool import Pool
from trytond.pyson import Eval
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .marketing_automation import sliced
from .reporting import trends


def _statistic(field):
    return fields.Function(field, 'get_statistics')


def _trend(field):
    return fields.Function(field, 'get_trend')


class ActivityStatistics:
    "The statistics fields of an activity, one aggregate query by slice"
    __slots__ = ()
    _email_states = {
        'invisible': Eval('action') != 'send_email',
        }

    record_count = fields.Function(
        fields.Integer("Records"), 'get_statistics')
    email_opened = _statistic(fields.Integer(
            "Emails Opened", states=_email_states))
    email_opened_machine = _statistic(fields.Integer(
            "Emails Opened by Machine", states=_email_states,
            help="Opens by privacy proxies: they move no branch."))
    email_clicked = _statistic(fields.Integer(
            "Emails Clicked", states=_email_states))
    email_filtered = _statistic(fields.Integer(
            "Emails Filtered", states=_email_states,
            help="Emails on which an open or a click was ignored as a "
            "scanner's, a prefetch's or too early: they move no branch."))
    email_open_rate = _statistic(fields.Float(
            "Email Open Rate", digits=(1, 2), states=_email_states))
    email_click_rate = _statistic(fields.Float(
            "Email Click Rate", digits=(1, 2), states=_email_states))
    email_click_through_rate = _statistic(fields.Float(
            "Email Click-Through Rate", digits=(1, 2),
            states=_email_states))
    email_open_rate_trend = _trend(fields.Char(
            "Email Open Rate Trend", states=_email_states))
    email_click_rate_trend = _trend(fields.Char(
            "Email Click Rate Trend", states=_email_states))
    email_click_through_rate_trend = _trend(fields.Char(
            "Email Click-Through Rate Trend", states=_email_states))
    del _email_states

    @classmethod
    def get_trend(cls, activities, names):
        pool = Pool()
        Report = pool.get('marketing.automation.reporting.activity')
        return trends(Report, 'activity', [a.id for a in activities], names)

    @classmethod
    def get_statistics(cls, activities, names):
        pool = Pool()
        cursor = Transaction().connection.cursor()
        RecordActivity = pool.get('marketing.automation.record.activity')
        record_activity = RecordActivity.__table__()

        values = {n: defaultdict(lambda: None) for n in names}
        for sub_ids in sliced(activities):
            sub_ids = list(map(int, sub_ids))
            cursor.execute(*record_activity.select(
                    record_activity.activity,
                    Count(),
                    Sum(Case((record_activity.email_opened, 1), else_=0)),
                    Sum(Case((record_activity.email_clicked, 1), else_=0)),
                    Sum(Case(
                            (record_activity.email_opened_machine, 1),
                            else_=0)),
                    Sum(Case(
                            (record_activity.email_filtered, 1), else_=0)),
                    where=reduce_ids(record_activity.activity, sub_ids)
                    & (record_activity.state == 'done'),
                    group_by=record_activity.activity))
            counts = {a: (d, o or 0, c or 0, m or 0, f or 0)
                for a, d, o, c, m, f in cursor}
            for activity_id in sub_ids:
                done, opened, clicked, machine, filtered = counts.get(
                    activity_id, (0, 0, 0, 0, 0))
                row = {
                    'record_count': done,
                    'email_opened': opened,
                    'email_opened_machine': machine,
                    'email_clicked': clicked,
                    'email_filtered': filtered,
                    'email_open_rate': (
                        round(opened / done, 2) if done else 0.),
                    'email_click_rate': (
                        round(clicked / done, 2) if done else 0.),
                    'email_click_through_rate': (
                        round(clicked / opened, 2) if opened else 0.),
                    }
                for name in names:
                    values[name][activity_id] = row[name]
        return values
