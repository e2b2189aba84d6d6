# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The statistics of the scenarios and the activities: what was done,
opened, clicked, bounced and complained of"""
from collections import defaultdict

from sql.aggregate import Sum
from sql.conditionals import Case

from trytond.model import fields
from trytond.pool import Pool
from trytond.pyson import Eval
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .batch import sliced


def _statistic(field):
    return fields.Function(field, 'get_statistics')


def _trend(field):
    return fields.Function(field, 'get_trend')


class Trends:
    "The trends of the rates, from the report named by _trend_report"
    __slots__ = ()
    _trend_report = _trend_key = None

    @classmethod
    def get_trend(cls, records, names):
        # reporting needs the module's helpers, which need this mixin
        from .reporting import trends
        pool = Pool()
        Report = pool.get(cls._trend_report)
        return trends(Report, cls._trend_key, [r.id for r in records], names)


class ActivityStatistics(Trends):
    "The statistics fields of an activity, one aggregate query by slice"
    __slots__ = ()
    _trend_report = 'marketing.automation.reporting.activity'
    _trend_key = 'activity'
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
    email_opened_count = fields.Integer(
        "Opens Counted", readonly=True, states=_email_states,
        help="How many times the emails were opened, counted without "
        "keeping by whom, when the scenario counts opens by activity.")
    email_open_token = fields.Char(
        "Open Token", readonly=True, strip=False)
    email_bounced = _statistic(fields.Integer(
            "Emails Bounced", states=_email_states))
    email_complained = _statistic(fields.Integer(
            "Emails Complained", states=_email_states))
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
    def default_email_opened_count(cls):
        return 0

    @classmethod
    def count_open(cls, token):
        """Count an open of the emails of the activity of token and tell
        whether there is one"""
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        # One statement: the route runs at each open
        cursor.execute(*table.update(
                [table.email_opened_count],
                [table.email_opened_count + 1],
                where=table.email_open_token == token))
        return bool(cursor.rowcount)

    @classmethod
    def copy(cls, activities, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('email_opened_count', 0)
        default.setdefault('email_open_token')
        return super().copy(activities, default=default)

    @classmethod
    def get_statistics(cls, activities, names):
        pool = Pool()
        cursor = Transaction().connection.cursor()
        RecordActivity = pool.get('marketing.automation.record.activity')
        record_activity = RecordActivity.__table__()

        values = {n: defaultdict(lambda: None) for n in names}

        def count(condition):
            return Sum(Case((condition, 1), else_=0))
        for sub_ids in sliced(activities):
            sub_ids = list(map(int, sub_ids))
            # A bounced email may have failed its record activity
            cursor.execute(*record_activity.select(
                    record_activity.activity,
                    count(record_activity.state == 'done'),
                    count(record_activity.email_opened),
                    count(record_activity.email_clicked),
                    count(record_activity.email_opened_machine),
                    count(record_activity.email_filtered),
                    count(record_activity.email_bounced),
                    count(record_activity.email_complained),
                    where=reduce_ids(record_activity.activity, sub_ids)
                    & record_activity.state.in_(['done', 'failed']),
                    group_by=record_activity.activity))
            counts = {a: [c or 0 for c in row] for a, *row in cursor}
            for activity_id in sub_ids:
                (done, opened, clicked, machine, filtered, bounced,
                    complained) = counts.get(activity_id, [0] * 7)
                row = {
                    'record_count': done,
                    'email_opened': opened,
                    'email_opened_machine': machine,
                    'email_clicked': clicked,
                    'email_filtered': filtered,
                    'email_bounced': bounced,
                    'email_complained': complained,
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


class ScenarioStatistics(Trends):
    "The bounces and the complaints of a scenario, one query by slice"
    __slots__ = ()
    _trend_report = 'marketing.automation.reporting.scenario'
    _trend_key = 'scenario'

    email_bounced = fields.Function(
        fields.Integer("Emails Bounced"), 'get_email_feedback')
    email_complained = fields.Function(
        fields.Integer("Emails Complained"), 'get_email_feedback')

    @classmethod
    def get_email_feedback(cls, scenarios, names):
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        record = Record.__table__()
        record_activity = RecordActivity.__table__()
        cursor = Transaction().connection.cursor()
        values = {n: dict.fromkeys(map(int, scenarios), 0) for n in names}
        for sub_ids in sliced(list(map(int, scenarios))):
            cursor.execute(*record_activity.join(record,
                    condition=record_activity.record == record.id
                    ).select(
                    record.scenario,
                    Sum(Case((record_activity.email_bounced, 1), else_=0)),
                    Sum(Case((record_activity.email_complained, 1), else_=0)),
                    where=reduce_ids(record.scenario, sub_ids)
                    & (record_activity.email_bounced
                        | record_activity.email_complained),
                    group_by=record.scenario))
            for scenario_id, bounced, complained in cursor:
                row = {
                    'email_bounced': bounced or 0,
                    'email_complained': complained or 0,
                    }
                for name in names:
                    values[name][scenario_id] = row[name]
        return values
