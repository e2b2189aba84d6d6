# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Why and until when a due email waits: the sending window of its scenario
and the frequency cap of its party"""
import datetime as dt
from collections import defaultdict, namedtuple

from sql import Literal
from sql.conditionals import Coalesce

from trytond import backend
from trytond.model import ModelSQL, Unique, fields
from trytond.pool import Pool
from trytond.tools import reduce_ids
from trytond.tools import timezone as tz
from trytond.transaction import Transaction

from .batch import sliced, sliced_rows
from .pacing import rows_of_table_without_model

TIMEZONES = [(None, "")] + sorted((z, z) for z in tz.available_timezones())
WEEKDAYS = [
    ('0', "Monday"), ('1', "Tuesday"), ('2', "Wednesday"), ('3', "Thursday"),
    ('4', "Friday"), ('5', "Saturday"), ('6', "Sunday"),
    ]


class Window(namedtuple('Window', ['weekdays', 'start', 'end'])):
    """When emails may go, in local time: on the weekdays (0 is Monday),
    from start until end, on the next day when end is not after start"""
    __slots__ = ()

    def intervals(self, day, tzinfo):
        "Yield the opening and the closing in UTC of the window of day"
        if day.weekday() not in self.weekdays:
            return
        start = self.start or dt.time()
        end_day = day
        if self.end is None or self.end <= start:
            end_day += dt.timedelta(days=1)
        # A time that does not exist in a change of hour is taken with the
        # offset before it, so it falls just after the gap
        opening, closing = (
            dt.datetime.combine(d, t, tzinfo).astimezone(tz.UTC)
            for d, t in [(day, start), (end_day, self.end or dt.time())])
        yield opening.replace(tzinfo=None), closing.replace(tzinfo=None)

    def next_opening(self, now, tzinfo):
        """Return None when the window is open at now, else when it opens
        next; now and the result are naive UTC"""
        local = now.replace(tzinfo=tz.UTC).astimezone(tzinfo).date()
        openings = []
        # From the day before, for a window that crosses midnight
        for offset in range(-1, 8):
            day = local + dt.timedelta(days=offset)
            for opening, closing in self.intervals(day, tzinfo):
                if opening <= now < closing:
                    return None
                if opening > now:
                    openings.append(opening)
        return min(openings)


class PartyCap(ModelSQL):
    """The row of a party that the runs composing for it write first, so
    that they count its emails one after the other (_lock)"""
    __name__ = 'marketing.automation.party.cap'

    party = fields.Many2One(
        'party.party', "Party", required=True, ondelete='CASCADE')

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_constraints = [
            ('party_unique', Unique(t, t.party),
                'marketing_automation.msg_party_cap_unique'),
            ]

    @classmethod
    def __register__(cls, module):
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        rows = rows_of_table_without_model(cls, table, [table.party])
        super().__register__(module)
        for sub_rows in sliced_rows(rows, 1):
            cursor.execute(*table.insert([table.party], list(sub_rows)))


def hold_back(activity, record_activities, now):
    """Return the record activities of activity whose email may go now, and
    the reason and the date until which each other one is held back"""
    if activity.action != 'send_email' or not record_activities:
        return record_activities, {}
    pool = Pool()
    Party = pool.get('party.party')
    scenario = activity.scenario
    window = scenario.window
    cap, period = _cap()
    if scenario.frequency_cap_exempt:
        cap = None
    if window is None and cap is None:
        return record_activities, {}
    # Reading the party of each record costs: only the cap and the time
    # zone of a party need it
    if cap is not None or 'timezone' in Party._fields:
        parties = {ra: ra.record.party for ra in record_activities}
    else:
        parties = dict.fromkeys(record_activities)
    deferred = {}
    if window is not None:
        # Once by time zone, not by record
        openings = {}
        for record_activity, party in parties.items():
            zone = getattr(party, 'timezone', None)
            if zone not in openings:
                openings[zone] = window.next_opening(
                    now, _tzinfo(scenario, party))
            if openings[zone] is not None:
                deferred[record_activity] = ('window', openings[zone])
    if cap is not None:
        deferred.update(_capped(
                {ra: p for ra, p in parties.items()
                    if p is not None and ra not in deferred},
                cap, period, now))
    return [ra for ra in record_activities if ra not in deferred], deferred


def _cap():
    "Return the frequency cap and its period, or None"
    pool = Pool()
    Configuration = pool.get('marketing.automation.configuration')
    configuration = Configuration(1)
    if configuration.frequency_cap and configuration.frequency_period:
        return configuration.frequency_cap, configuration.frequency_period
    return None, None


def _tzinfo(scenario, party):
    "Return the time zone of the window for party"
    pool = Pool()
    zone = getattr(party, 'timezone', None) or scenario.window_timezone
    if not zone:
        company_id = Transaction().context.get('company')
        try:
            Company = pool.get('company.company')
        except KeyError:
            Company = None
        if Company is not None and company_id:
            zone = Company(company_id).timezone
    return tz.get_tzinfo(zone) if zone else tz.UTC


def _capped(parties, cap, period, now):
    """Return the reason and the date until which wait the record activities
    whose party reached the cap, counting those before them"""
    party_ids = sorted({p.id for p in parties.values()})
    _lock(party_ids)
    times = _sent_times(party_ids, now - period)
    deferred = {}
    for record_activity in sorted(parties, key=lambda ra: ra.id):
        sent = times[parties[record_activity].id]
        if len(sent) < cap:
            sent.append(now)
        else:
            # It frees when the oldest of the last cap emails is out of
            # the period
            sent.sort(reverse=True)
            deferred[record_activity] = (
                'frequency', max(sent[cap - 1] + period, now))
    return deferred


def _lock(party_ids):
    """Take the cap of the parties for the transaction, in the order of
    their ids

    Each party has a row that every run composing for it writes: the
    transactions of PostgreSQL see the data as it was when they began, so a
    lock would not show what a run that held it before composed; writing a
    row that run wrote makes this one fail and retry with fresh data.
    SQLite has one writer: a concurrent run fails to write and retries."""
    if backend.name != 'postgresql':
        return
    table = Pool().get('marketing.automation.party.cap')._table
    cursor = Transaction().connection.cursor()
    for sub_ids in sliced(party_ids):
        sub_ids = list(sub_ids)
        cursor.execute(
            'INSERT INTO "%s" (party) SELECT UNNEST(%%s::integer[]) '
            'ON CONFLICT DO NOTHING' % table, (sub_ids,))
        cursor.execute(
            'UPDATE "%(table)s" SET party = party WHERE party IN '
            '(SELECT party FROM "%(table)s" WHERE party = ANY(%%s) '
            'ORDER BY party FOR UPDATE)' % {'table': table},
            (sub_ids,))


def _sent_times(party_ids, since):
    """Return the times of the emails of each party that count for the cap
    since: sent, or waiting in the outbox"""
    pool = Pool()
    Email = pool.get('ir.email')
    Record = pool.get('marketing.automation.record')
    Scenario = pool.get('marketing.automation.scenario')
    email = Email.__table__()
    record = Record.__table__()
    scenario = Scenario.__table__()
    cursor = Transaction().connection.cursor()
    at = Coalesce(email.marketing_automation_sent_at, email.create_date)
    times = defaultdict(list)
    for sub_ids in sliced(party_ids):
        cursor.execute(*email
            .join(record,
                condition=email.marketing_automation_record == record.id)
            .join(scenario, condition=record.scenario == scenario.id)
            .select(email.marketing_automation_party, at,
                where=reduce_ids(email.marketing_automation_party, sub_ids)
                & email.marketing_automation_status.in_(
                    ['pending', 'sending', 'sent'])
                & (at > since)
                & (Coalesce(scenario.frequency_cap_exempt, False)
                    == Literal(False))))
        for party_id, sent_at in cursor:
            if isinstance(sent_at, str):
                sent_at = dt.datetime.fromisoformat(sent_at)
            times[party_id].append(sent_at)
    return times
