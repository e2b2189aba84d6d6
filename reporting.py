# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Reporting: the scenarios and activities by period, and their trends

Each report is one SQL query grouped by period, whatever the number of rows
and periods. The rates are fractions computed as floats on every backend."""
import datetime as dt
from collections import defaultdict

from dateutil.relativedelta import relativedelta
from sql import Cast, Column, Literal, Null, Values
from sql.aggregate import Count, Max, Min, Sum
from sql.conditionals import Case, Coalesce
from sql.functions import DateTrunc
from sql.operators import Exists, Mul

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


def _total(column):
    "The sum of counts, an integer on every backend (a numeric on PostgreSQL)"
    return Cast(Sum(column), 'INTEGER')


def _rate(numerator, denominator):
    "A fraction, as a float on every backend, or 0"
    return Case(
        (denominator > 0, Mul(numerator, 1.0) / denominator), else_=0.0)


def _period():
    return Transaction().context.get('period') or 'month'


_DATE = fields.Date("Date")
_DATETIME = fields.DateTime("Date")
# At most that many periods are probed for the rows of a report, else its
# rows are those of its figures
MAX_PERIODS = 1000


def _day(column):
    "The day of column: a cast is cheaper than a truncation on each row"
    return _DATE.sql_cast(column)


def _grouped(counts, key, columns, dated):
    "Select the columns of counts by key, and by date when dated"
    group_by = [key]
    if dated:
        # As a position: PostgreSQL tells apart the same expressions with
        # parameters of their own
        date = _date(counts.day).as_('date')
        columns.append(date)
        group_by.append(date)
    return counts.select(*columns, group_by=group_by)


def _date(day):
    "The first day of the period of the context of the day"
    return _DATE.sql_cast(DateTrunc(_period(), _DATETIME.sql_cast(day)))


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


def _periods():
    """Return the values of the periods of the context within its dates:
    index, first day, first day within the dates and the day after the
    last; None when a date is missing or there are too many"""
    context = Transaction().context
    from_date, to_date = context.get('from_date'), context.get('to_date')
    if not from_date or not to_date or from_date > to_date:
        return None
    delta = PERIODS[_period()]
    start = _truncate(from_date)
    end = to_date + dt.timedelta(days=1)
    periods = []
    while start <= to_date:
        periods.append([len(periods), start, max(start, from_date),
                min(start + delta, end)])
        if len(periods) > MAX_PERIODS:
            return None
        start += delta
    return periods


def _rows(aggregate, key, keys, exists, figures=None, **extra):
    """Return the query of the rows of a report: the rows of keys (a table)
    by period of the context that exists(keys.id, start, end), joined to
    the figures grouped by key and date (by default those of aggregate);
    aggregate() alone when the periods are not bounded. extra are more
    columns of keys, by name.

    A search reads no figure: PostgreSQL drops the join when no column of
    the figures is read, so that the figures are computed once, by the
    read. The id is made of the key and of the index of the period."""
    periods = _periods()
    if periods is None:
        return aggregate()
    if figures is None:
        figures = aggregate()
    values = Values(periods)
    index, date, start, end = (
        Column(values, 'column%s' % i) for i in range(1, 5))
    rows = keys.join(values, type_='CROSS').select(
        (Cast(keys.id, 'BIGINT') * len(periods) + index + 1).as_('id'),
        keys.id.as_(key), date.as_('date'),
        *(c.as_(n) for n, c in extra.items()),
        where=exists(keys.id, start, end))
    names = [c.output_name for c in figures.columns]
    return rows.join(figures, 'LEFT',
        condition=(Column(figures, key) == Column(rows, key))
        & (figures.date == rows.date)
        ).select(rows.id, Column(rows, key),
            _DATE.sql_cast(rows.date).as_('date'),
            *(Column(rows, n) for n in extra),
            *(Column(figures, n) for n in names
                if n not in {'id', key, 'date', *extra}))


def _lazy_figures(cls):
    """The figures are read when asked, not loaded by a search: its query
    reads only the keys of the rows"""
    for name in dir(cls):
        field = getattr(cls, name)
        if name != 'id' and isinstance(field, (fields.Integer, fields.Float)):
            field.loading = 'lazy'


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
        _lazy_figures(cls)

    @classmethod
    def table_query(cls):
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        record = Record.__table__()

        def exists(scenario, start, end):
            # A probe of the index on the scenario and day of the records
            day = _day(record.create_date)
            return Exists(record.select(Literal(1),
                    where=(record.scenario == scenario)
                    & (day >= start) & (day < end)))
        return _rows(
            cls.aggregate, 'scenario', Scenario.__table__(), exists)

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
        # The few records with a flagged email or a failure, from a partial
        # index, rather than a lookup for each record
        flagged = record_activity.select(
            record_activity.record.as_('record'),
            Max(Case((bounced, 1), else_=0)).as_('bounced'),
            Max(Case((complained, 1), else_=0)).as_('complained'),
            _count(failed).as_('failed'),
            where=bounced | complained | failed,
            group_by=[record_activity.record])

        where = Literal(True)
        if ids is not None:
            where &= reduce_ids(record.scenario, ids)
        keys = [record.scenario.as_('scenario')]
        if dated:
            where &= _dates_where(record.create_date)
            keys.append(_day(record.create_date).as_('day'))
        # Counted by day, then by period of the context
        counts = record.join(flagged, 'LEFT',
            condition=flagged.record == record.id
            ).select(*keys,
                Min(record.id).as_('id'),
                Count().as_('records'),
                _count(record.blocked == Literal(True)).as_('blocked'),
                _count(record.converted != Null).as_('converted'),
                Sum(Coalesce(flagged.failed, 0)).as_('failed'),
                _count(flagged.bounced == 1).as_('bounced'),
                _count(flagged.complained == 1).as_('complained'),
                where=where, group_by=[k.expression for k in keys])
        records = _total(counts.records)
        blocked = _total(counts.blocked)
        converted = _total(counts.converted)
        columns = [
            Min(counts.id).as_('id'),
            counts.scenario.as_('scenario'),
            records.as_('record_count'),
            blocked.as_('record_count_blocked'),
            _rate(blocked, records).as_('block_rate'),
            _total(counts.failed).as_('failed_count'),
            _total(counts.bounced).as_('email_bounced'),
            _total(counts.complained).as_('email_complained'),
            converted.as_('record_count_converted'),
            _rate(converted, records).as_('conversion_rate'),
            ]
        return _grouped(counts, counts.scenario, columns, dated)


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
        _lazy_figures(cls)

    def get_scenario(self, name):
        return self.activity.scenario.id if self.activity else None

    @classmethod
    def get_activity_actions(cls):
        return Pool().get(
            'marketing.automation.activity').get_parent_actions()

    @classmethod
    def table_query(cls):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        RecordActivity = pool.get('marketing.automation.record.activity')
        record_activity = RecordActivity.__table__()
        activity = Activity.__table__()

        def exists(activity, start, end):
            # A probe of the partial index on the activity and date of the
            # record activities done or failed
            return Exists(record_activity.select(Literal(1),
                    where=(record_activity.activity == activity)
                    & record_activity.state.in_(['done', 'failed'])
                    & (record_activity.at >= start)
                    & (record_activity.at < end)))
        return _rows(cls.aggregate, 'activity', activity, exists,
            figures=cls._figures(), activity_action=activity.action)

    @classmethod
    def aggregate(cls, ids=None, dated=True):
        """Return the query of the figures of the activities of ids, of all
        when None: by period of their record activities within the dates of
        the context when dated, else one row by activity for all time

        The statistics of the activities are the undated figures."""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        activity = Activity.__table__()
        figures = cls._figures(ids=ids, dated=dated)
        # The action joined to the figures, not to each record activity
        return figures.join(activity,
            condition=figures.activity == activity.id
            ).select(
                *(Column(figures, c.output_name).as_(c.output_name)
                    for c in figures.columns),
                activity.action.as_('activity_action'))

    @classmethod
    def _figures(cls, ids=None, dated=True):
        "Return the query of the figures, grouped by activity and date"
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        record_activity = RecordActivity.__table__()
        flags = ['email_opened', 'email_clicked', 'email_opened_machine',
            'email_filtered', 'email_bounced', 'email_complained']
        # A bounced email may have failed its record activity
        where = (record_activity.state.in_(['done', 'failed'])
            & (record_activity.at != Null))
        if ids is not None:
            where &= reduce_ids(record_activity.activity, ids)
        keys = [record_activity.activity.as_('activity')]
        if dated:
            where &= _dates_where(record_activity.at)
            keys.append(_day(record_activity.at).as_('day'))
        # Counted by day, then by period of the context
        counts = record_activity.select(*keys,
            Min(record_activity.id).as_('id'),
            _count(record_activity.state == 'done').as_('done'),
            _count(record_activity.state == 'failed').as_('failed'),
            *(_count(Column(record_activity, f) == Literal(True)).as_(f)
                for f in flags),
            where=where, group_by=[k.expression for k in keys])
        done = _total(counts.done)
        opened = _total(counts.email_opened)
        clicked = _total(counts.email_clicked)
        columns = [
            Min(counts.id).as_('id'),
            counts.activity.as_('activity'),
            done.as_('record_count'),
            _total(counts.failed).as_('failed_count'),
            *(_total(Column(counts, f)).as_(f) for f in flags),
            _rate(opened, done).as_('email_open_rate'),
            _rate(clicked, done).as_('email_click_rate'),
            _rate(clicked, opened).as_('email_click_through_rate'),
            ]
        return _grouped(counts, counts.activity, columns, dated)


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
