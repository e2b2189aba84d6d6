# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Reporting: the scenarios and activities by period, and their trends

Each report is one SQL query grouped by period, whatever the number of rows
and periods. The rates are fractions computed as floats on every backend."""
import datetime as dt
from collections import defaultdict

from dateutil.relativedelta import relativedelta
from sql import Cast, Column, Literal, Null
from sql.aggregate import Count, Max, Min, Sum
from sql.conditionals import Case, Coalesce
from sql.functions import DateTrunc
from sql.operators import Mul

from trytond.model import ModelSQL, ModelView, fields
from trytond.pool import Pool
from trytond.pyson import Eval, If
from trytond.tools import reduce_ids
from trytond.tools.chart import sparkline
from trytond.transaction import Transaction

from .batch import sliced

PERIODS = {
    'year': relativedelta(years=1),
    'month': relativedelta(months=1),
    'day': relativedelta(days=1),
    }
# The periods a trend shows
TREND_LENGTH = 12


def _count(condition):
    return Sum(Case((condition, 1), else_=0))


def _rate(numerator, denominator):
    "A fraction, as a float on every backend, or 0"
    return Case(
        (denominator > 0, Mul(numerator, 1.0) / denominator), else_=0.0)


def _period():
    return Transaction().context.get('period') or 'month'


_DATE = fields.Date("Date")


def _date(column):
    return _DATE.sql_cast(DateTrunc(_period(), column))


def _by_date(column, columns, group_by):
    """Add the date of column by the period of the context to columns and
    group_by, and return the condition of the dates of the context"""
    date = _date(column)
    columns.append(date.as_('date'))
    group_by.append(date.as_('date'))
    return _dates_where(column)


def _dates_where(column):
    context = Transaction().context
    where = Literal(True)
    if context.get('from_date'):
        where &= column >= dt.datetime.combine(
            context['from_date'], dt.time())
    if context.get('to_date'):
        where &= column < dt.datetime.combine(
            context['to_date'] + dt.timedelta(days=1), dt.time())
    return where


class Context(ModelView):
    "The period and the dates of the reports"
    __name__ = 'marketing.automation.reporting.context'

    from_date = fields.Date(
        "From Date",
        domain=[
            If(Eval('to_date') & Eval('from_date'),
                ('from_date', '<=', Eval('to_date')),
                ()),
            ])
    to_date = fields.Date(
        "To Date",
        domain=[
            If(Eval('from_date') & Eval('to_date'),
                ('to_date', '>=', Eval('from_date')),
                ()),
            ])
    period = fields.Selection([
            ('year', "Year"),
            ('month', "Month"),
            ('day', "Day"),
            ], "Period", required=True)

    @classmethod
    def default_from_date(cls):
        context = Transaction().context
        if 'from_date' in context:
            return context['from_date']
        return dt.date.today() - relativedelta(years=1)

    @classmethod
    def default_to_date(cls):
        return Transaction().context.get('to_date') or dt.date.today()

    @classmethod
    def default_period(cls):
        return _period()


class Scenario(ModelSQL, ModelView):
    "The records enrolled in each scenario, by period of enrolment"
    __name__ = 'marketing.automation.reporting.scenario'

    date = fields.Date("Date")
    scenario = fields.Many2One('marketing.automation.scenario', "Scenario")
    record_count = fields.Integer("Records")
    record_count_blocked = fields.Integer("Records Blocked")
    block_rate = fields.Float("Block Rate", digits=(1, 2))
    failed_count = fields.Integer(
        "Failed",
        help="The record activities of its records that failed: the "
        "activity could not run for the record, or its email could not be "
        "delivered.")
    email_bounced = fields.Integer(
        "Records Bounced", help="The records an email of which bounced.")
    email_complained = fields.Integer(
        "Records Complained",
        help="The records an email of which was reported as spam.")
    record_count_converted = fields.Integer(
        "Records Converted", help="The records that met the goal.")
    conversion_rate = fields.Float("Conversion Rate", digits=(1, 2))

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls._order = [('date', 'DESC'), ('scenario', 'ASC'), ('id', 'ASC')]

    @classmethod
    def table_query(cls):
        return cls.aggregate()

    @classmethod
    def aggregate(cls, ids=None, dated=True):
        """Return the query of the figures of the scenarios of ids, of all
        when None: by period of enrolment within the dates of the context
        when dated, else one row by scenario for all time

        The statistics of the scenarios are the undated figures."""
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        record = Record.__table__()
        record_activity = RecordActivity.__table__()
        bounced = record_activity.email_bounced == Literal(True)
        complained = record_activity.email_complained == Literal(True)
        failed = record_activity.state == 'failed'
        # The records with a flagged email or a failure, joined: a subquery
        # by record would cost the hundreds of thousands of records a
        # lookup each
        flagged = record_activity.select(
            record_activity.record.as_('record'),
            Max(Case((bounced, 1), else_=0)).as_('bounced'),
            Max(Case((complained, 1), else_=0)).as_('complained'),
            _count(failed).as_('failed'),
            where=bounced | complained | failed,
            group_by=[record_activity.record])
        blocked = _count(record.blocked == Literal(True))
        converted = _count(record.converted != Null)
        columns = [
            Min(record.id).as_('id'),
            record.scenario.as_('scenario'),
            Count().as_('record_count'),
            blocked.as_('record_count_blocked'),
            _rate(blocked, Count()).as_('block_rate'),
            # A sum of counts is a numeric on PostgreSQL
            Cast(Sum(Coalesce(flagged.failed, 0)), 'INTEGER').as_(
                'failed_count'),
            _count(flagged.bounced == 1).as_('email_bounced'),
            _count(flagged.complained == 1).as_('email_complained'),
            converted.as_('record_count_converted'),
            _rate(converted, Count()).as_('conversion_rate'),
            ]
        where = Literal(True)
        if ids is not None:
            where &= reduce_ids(record.scenario, ids)
        group_by = [record.scenario]
        if dated:
            where &= _by_date(record.create_date, columns, group_by)
        return record.join(flagged, 'LEFT',
            condition=flagged.record == record.id
            ).select(*columns, where=where, group_by=group_by)


class Activity(ModelSQL, ModelView):
    "What each activity did, by period of its record activities"
    __name__ = 'marketing.automation.reporting.activity'

    date = fields.Date("Date")
    activity = fields.Many2One('marketing.automation.activity', "Activity")
    scenario = fields.Function(
        fields.Many2One('marketing.automation.scenario', "Scenario"),
        'get_scenario')
    activity_action = fields.Selection(
        'get_activity_actions', "Activity Action")
    record_count = fields.Integer("Records")
    failed_count = fields.Integer(
        "Failed",
        help="The record activities that failed: the activity could not "
        "run for the record, or its email could not be delivered.")
    email_opened = fields.Integer("Emails Opened")
    email_clicked = fields.Integer("Emails Clicked")
    email_opened_machine = fields.Integer("Emails Opened by Machine")
    email_filtered = fields.Integer("Emails Filtered")
    email_bounced = fields.Integer("Emails Bounced")
    email_complained = fields.Integer("Emails Complained")
    email_open_rate = fields.Float("Email Open Rate", digits=(1, 2))
    email_click_rate = fields.Float("Email Click Rate", digits=(1, 2))
    email_click_through_rate = fields.Float(
        "Email Click-Through Rate", digits=(1, 2))

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls._order = [('date', 'DESC'), ('activity', 'ASC'), ('id', 'ASC')]

    def get_scenario(self, name):
        return self.activity.scenario.id if self.activity else None

    @classmethod
    def get_activity_actions(cls):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        return Activity.get_parent_actions()

    @classmethod
    def table_query(cls):
        return cls.aggregate()

    @classmethod
    def aggregate(cls, ids=None, dated=True):
        """Return the query of the figures of the activities of ids, of all
        when None: by period of their record activities within the dates of
        the context when dated, else one row by activity for all time

        The statistics of the activities are the undated figures."""
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        Activity = pool.get('marketing.automation.activity')
        record_activity = RecordActivity.__table__()
        activity = Activity.__table__()
        done = _count(record_activity.state == 'done')
        opened = _count(record_activity.email_opened == Literal(True))
        clicked = _count(record_activity.email_clicked == Literal(True))
        columns = [
            Min(record_activity.id).as_('id'),
            record_activity.activity.as_('activity'),
            done.as_('record_count'),
            _count(record_activity.state == 'failed').as_('failed_count'),
            opened.as_('email_opened'),
            clicked.as_('email_clicked'),
            _count(record_activity.email_opened_machine
                == Literal(True)).as_('email_opened_machine'),
            _count(record_activity.email_filtered
                == Literal(True)).as_('email_filtered'),
            _count(record_activity.email_bounced
                == Literal(True)).as_('email_bounced'),
            _count(record_activity.email_complained
                == Literal(True)).as_('email_complained'),
            _rate(opened, done).as_('email_open_rate'),
            _rate(clicked, done).as_('email_click_rate'),
            _rate(clicked, opened).as_('email_click_through_rate'),
            ]
        # A bounced email may have failed its record activity
        where = (record_activity.state.in_(['done', 'failed'])
            & (record_activity.at != Null))
        if ids is not None:
            where &= reduce_ids(record_activity.activity, ids)
        group_by = [record_activity.activity]
        if dated:
            where &= _by_date(record_activity.at, columns, group_by)
        figures = record_activity.select(
            *columns, where=where, group_by=group_by)
        # The action joined to the figures, not to each record activity
        return figures.join(activity,
            condition=figures.activity == activity.id
            ).select(
                *[Column(figures, c.output_name) for c in columns],
                activity.action.as_('activity_action'))


def figures(Report, key, ids, names):
    """Return the figures of names of the report for all time, for each id
    of key, in one query by slice: the statistics of the forms

    An id without row has no figure: 0. The rates are rounded to 2
    places."""
    cursor = Transaction().connection.cursor()
    rates = {n for n in names if isinstance(Report._fields[n], fields.Float)}
    values = {n: dict.fromkeys(ids, 0.0 if n in rates else 0) for n in names}
    for sub_ids in sliced(ids):
        table = Report.aggregate(ids=list(sub_ids), dated=False)
        cursor.execute(*table.select(
                getattr(table, key), *[getattr(table, n) for n in names]))
        for key_id, *row in cursor:
            for name, value in zip(names, row):
                values[name][key_id] = (
                    round(float(value or 0), 2) if name in rates
                    else value or 0)
    return values


def trends(Report, key, ids, names):
    """Return the sparkline of the fields of names over the last periods of
    the report, for each id of key, in one query by slice"""
    today = dt.date.today()
    delta = PERIODS[_period()]
    start = today - delta * (TREND_LENGTH - 1)
    cursor = Transaction().connection.cursor()
    values = defaultdict(dict)
    fields_ = [n[:-len('_trend')] for n in names]
    with Transaction().set_context(from_date=start, to_date=today):
        for sub_ids in sliced(ids):
            table = Report.aggregate(ids=list(sub_ids))
            cursor.execute(*table.select(
                    table.date, getattr(table, key),
                    *[getattr(table, f) for f in fields_]))
            for date, key_id, *row in cursor:
                values[key_id][date] = row
    periods = [start + delta * i for i in range(TREND_LENGTH)]
    result = {n: {} for n in names}
    truncated = {p: _truncate(p) for p in periods}
    for id_ in ids:
        by_date = {_truncate(d): r for d, r in values[id_].items()}
        for index, name in enumerate(names):
            result[name][id_] = sparkline([
                    (by_date.get(truncated[p]) or [0] * len(names))[index]
                    or 0 for p in periods])
    return result


def _truncate(date):
    if isinstance(date, str):
        date = dt.date.fromisoformat(date[:10])
    period = _period()
    if period == 'year':
        return date.replace(month=1, day=1)
    if period == 'month':
        return date.replace(day=1)
    return date
