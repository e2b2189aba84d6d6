# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Pacing and goals: the sending windows, the frequency cap and the exit
goals

The windows are tested on a fixed clock; the engine runs on the real one,
with the dates of the data moved instead of the clock."""
import datetime as dt
import unittest
from types import SimpleNamespace

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation import deferral
from trytond.modules.marketing_automation.deferral import Window
from trytond.modules.marketing_automation.tests.tools import (
    SETTINGS, DatabaseTestCase, create_parties, create_scenario,
    email_activity, make_due, record_activities_of, smtp_server)
from trytond.pool import Pool
from trytond.pyson import PYSONEncoder
from trytond.tests.test_tryton import with_transaction
from trytond.tools import timezone as tz
from trytond.transaction import Transaction

BRUSSELS = tz.get_tzinfo('Europe/Brussels')
NEW_YORK = tz.get_tzinfo('America/New_York')
WEEKDAYS = frozenset(range(5))


def utc(*args):
    return dt.datetime(*args)


def local(tzinfo, *args):
    "Return the naive UTC of the local time args in tzinfo"
    return dt.datetime(*args, tzinfo=tzinfo).astimezone(tz.UTC).replace(
        tzinfo=None)


class WindowTestCase(unittest.TestCase):
    "The next opening of a sending window, on a fixed clock"

    def test_open(self):
        "Inside the hours of a weekday, the window is open"
        window = Window(WEEKDAYS, dt.time(9), dt.time(17))
        # Wednesday 2026-12-02 10:00 in Brussels is 09:00 UTC
        self.assertIsNone(window.next_opening(utc(2026, 12, 2, 9), BRUSSELS))

    def test_before_and_after(self):
        "Before the hours it opens the same day, after them the next day"
        window = Window(WEEKDAYS, dt.time(9), dt.time(17))
        self.assertEqual(
            window.next_opening(utc(2026, 12, 2, 6), BRUSSELS),
            local(BRUSSELS, 2026, 12, 2, 9))
        self.assertEqual(
            window.next_opening(utc(2026, 12, 2, 16), BRUSSELS),
            local(BRUSSELS, 2026, 12, 3, 9))

    def test_weekend(self):
        "On Friday evening it opens on Monday"
        window = Window(WEEKDAYS, dt.time(9), dt.time(17))
        self.assertEqual(
            window.next_opening(utc(2026, 12, 4, 18), BRUSSELS),
            local(BRUSSELS, 2026, 12, 7, 9))

    def test_time_zone(self):
        "The same hours open at other times in other zones"
        window = Window(WEEKDAYS, dt.time(9), dt.time(17))
        now = utc(2026, 12, 2, 12)
        self.assertIsNone(window.next_opening(now, BRUSSELS))
        self.assertEqual(
            window.next_opening(now, NEW_YORK),
            local(NEW_YORK, 2026, 12, 2, 9))
        self.assertEqual(
            window.next_opening(now, NEW_YORK), utc(2026, 12, 2, 14))

    def test_across_midnight(self):
        """Hours that end before they start end the next day: the window
        of Friday is still open on Saturday night"""
        window = Window(frozenset([4]), dt.time(22), dt.time(2))
        self.assertIsNone(window.next_opening(
                local(BRUSSELS, 2026, 12, 5, 1, 30), BRUSSELS))
        self.assertIsNone(window.next_opening(
                local(BRUSSELS, 2026, 12, 4, 23), BRUSSELS))
        self.assertEqual(
            window.next_opening(local(BRUSSELS, 2026, 12, 5, 3), BRUSSELS),
            local(BRUSSELS, 2026, 12, 11, 22))
        self.assertEqual(
            window.next_opening(local(BRUSSELS, 2026, 12, 4, 21), BRUSSELS),
            local(BRUSSELS, 2026, 12, 4, 22))

    def test_whole_days(self):
        "Without hours, the window is open all the day"
        window = Window(frozenset([5, 6]), None, None)
        self.assertIsNone(window.next_opening(
                local(BRUSSELS, 2026, 12, 6, 23, 59), BRUSSELS))
        self.assertEqual(
            window.next_opening(local(BRUSSELS, 2026, 12, 7, 0, 1), BRUSSELS),
            local(BRUSSELS, 2026, 12, 12, 0))

    def test_summer_time(self):
        """On the day the clocks go forward, 9:00 is an hour earlier in UTC
        and an opening in the gap falls just after it"""
        window = Window(frozenset(range(7)), dt.time(9), dt.time(17))
        # 2026-03-29: 02:00 CET becomes 03:00 CEST in Brussels
        self.assertEqual(
            window.next_opening(utc(2026, 3, 28, 20), BRUSSELS),
            utc(2026, 3, 29, 7))
        self.assertEqual(
            window.next_opening(utc(2026, 3, 27, 20), BRUSSELS),
            utc(2026, 3, 28, 8))
        gap = Window(frozenset(range(7)), dt.time(2, 30), dt.time(4))
        opening = gap.next_opening(utc(2026, 3, 28, 23), BRUSSELS)
        self.assertEqual(opening, utc(2026, 3, 29, 1, 30))
        self.assertEqual(
            opening.replace(tzinfo=tz.UTC).astimezone(BRUSSELS).time(),
            dt.time(3, 30))

    def test_winter_time(self):
        """On the day the clocks go back, the hours are an hour later in UTC
        and a window across midnight is an hour longer"""
        window = Window(frozenset(range(7)), dt.time(9), dt.time(17))
        # 2026-10-25: 03:00 CEST becomes 02:00 CET in Brussels
        self.assertEqual(
            window.next_opening(utc(2026, 10, 24, 20), BRUSSELS),
            utc(2026, 10, 25, 8))
        night = Window(frozenset([5]), dt.time(22), dt.time(6))
        # Saturday 22:00 CEST is 20:00 UTC, Sunday 06:00 CET is 05:00 UTC
        self.assertIsNone(night.next_opening(utc(2026, 10, 25, 4), BRUSSELS))
        self.assertIsNone(
            night.next_opening(utc(2026, 10, 24, 20), BRUSSELS))
        self.assertEqual(
            night.next_opening(utc(2026, 10, 25, 5), BRUSSELS),
            utc(2026, 10, 31, 21))


def emails_of(scenario):
    pool = Pool()
    Email = pool.get('ir.email')
    return Email.search([
            ('marketing_automation_record.scenario', '=', scenario.id),
            ])


def age_emails(days):
    "Move the emails sent back in time by days"
    pool = Pool()
    Email = pool.get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    delta = dt.timedelta(days=days)
    for email in Email.search([]):
        cursor.execute(*table.update(
                [table.marketing_automation_sent_at, table.create_date],
                [email.marketing_automation_sent_at - delta,
                    email.create_date - delta],
                where=table.id == email.id))


def process(scenarios):
    pool = Pool()
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')
    with smtp_server() as server:
        Scenario.trigger(scenarios)
        RecordActivity.process()
    return server


class PacingTestCase(DatabaseTestCase):
    "Pacing and goals in the engine"
    settings = SETTINGS

    @with_transaction()
    def test_window_defers(self):
        """Outside its window a due email waits for the opening, marked as
        deferred; at the opening it goes and its children count from then"""
        create_parties('SW', 2)
        now = dt.datetime.now()
        opening = (now + dt.timedelta(hours=2)).replace(
            minute=0, second=0, microsecond=0)
        scenario = create_scenario('SW', [email_activity(children=[
                        ('create', [email_activity(
                                    name="Later",
                                    delay=dt.timedelta(days=1))])])],
            window_weekdays=[str(d) for d in range(7)],
            window_start=opening.time(),
            window_end=(opening + dt.timedelta(hours=1)).time(),
            window_timezone='UTC')
        server = process([scenario])
        self.assertEqual(server.messages, [])
        waiting = record_activities_of(scenario)
        self.assertEqual({ra.state for ra in waiting}, {'waiting'})
        self.assertEqual({ra.deferred for ra in waiting}, {'window'})
        self.assertEqual({ra.at for ra in waiting}, {opening})

        # At the opening
        make_due(waiting)
        scenario.window_start = (now - dt.timedelta(hours=1)).time()
        scenario.window_end = (now + dt.timedelta(hours=1)).time()
        scenario.save()
        before = dt.datetime.now().replace(microsecond=0)
        server = process([scenario])
        self.assertEqual(len(server.messages), 2)
        done = record_activities_of(scenario, state='done')
        self.assertEqual(len(done), 2)
        self.assertEqual({ra.deferred for ra in done}, {None})
        for child in record_activities_of(scenario, state='waiting'):
            self.assertGreaterEqual(child.at, before + dt.timedelta(days=1))

    @with_transaction()
    def test_window_time_zone(self):
        """The hours are read in the party's time zone when a module gives
        the party one, else in the scenario's, else in UTC"""
        pool = Pool()
        Party = pool.get('party.party')
        create_parties('TZ', 1)
        party, = Party.search([('code', 'like', 'TZ-%')])
        scenario = create_scenario('TZ', [email_activity()], run=False)
        self.assertEqual(deferral._tzinfo(scenario, party), tz.UTC)
        scenario.window_timezone = 'Europe/Brussels'
        self.assertEqual(deferral._tzinfo(scenario, party), BRUSSELS)
        # No module of Tryton gives a party a time zone: a party of one
        with_zone = SimpleNamespace(timezone='America/New_York')
        self.assertEqual(deferral._tzinfo(scenario, with_zone), NEW_YORK)

    @with_transaction()
    def test_window_empty(self):
        "Hours that start and end at once are refused with the reason"
        create_parties('WE', 1)
        with self.assertRaisesRegex(ValidationError, 'same time'):
            create_scenario('WE', [email_activity()], run=False,
                window_weekdays=['0'], window_start=dt.time(9),
                window_end=dt.time(9))

    def _cap(self, cap, days=7):
        pool = Pool()
        Configuration = pool.get('marketing.automation.configuration')
        configuration = Configuration(1)
        configuration.frequency_cap = cap
        configuration.frequency_period = dt.timedelta(days=days)
        configuration.save()

    @with_transaction()
    def test_frequency_cap(self):
        """Across scenarios, a party gets at most the cap in the period:
        the others wait until the oldest leaves the period, never dropped;
        an exempt scenario is neither held nor counted"""
        create_parties('FC', 2)
        self._cap(2)
        scenarios = [
            create_scenario('FC', [email_activity()], name='FC %s' % i)
            for i in range(3)]
        exempt = create_scenario(
            'FC', [email_activity()], name='Exempt',
            frequency_cap_exempt=True)
        server = process(scenarios[:2] + [exempt])
        self.assertEqual(len(server.messages), 6)
        server = process(scenarios[2:])
        self.assertEqual(server.messages, [])
        held = record_activities_of(scenarios[2])
        self.assertEqual([ra.state for ra in held], ['waiting'] * 2)
        self.assertEqual([ra.deferred for ra in held], ['frequency'] * 2)
        first = max(e.marketing_automation_sent_at
            for e in emails_of(scenarios[0]))
        for record_activity in held:
            self.assertGreaterEqual(
                record_activity.at, first + dt.timedelta(days=7))

        # Once the emails left the period the held ones go
        age_emails(8)
        make_due(held)
        server = process(scenarios[2:])
        self.assertEqual(len(server.messages), 2)
        self.assertEqual(
            [ra.state for ra in record_activities_of(scenarios[2])],
            ['done'] * 2)

    @with_transaction()
    def test_frequency_cap_in_one_run(self):
        "Emails due in the same run count against each other"
        create_parties('FR', 1)
        self._cap(1)
        scenarios = [
            create_scenario('FR', [email_activity()], name='FR %s' % i)
            for i in range(3)]
        server = process(scenarios)
        self.assertEqual(len(server.messages), 1)
        states = sorted(
            (ra.state, ra.deferred) for s in scenarios
            for ra in record_activities_of(s))
        self.assertEqual(states, [
                ('done', None),
                ('waiting', 'frequency'), ('waiting', 'frequency')])

    @with_transaction()
    def test_goal(self):
        """A record that meets the goal is converted on enrolment or at the
        next run, and its waiting activities are cancelled"""
        pool = Pool()
        Party = pool.get('party.party')
        Record = pool.get('marketing.automation.record')
        Report = pool.get('marketing.automation.reporting.scenario')
        create_parties('GO', 3)
        bought, later, _ = Party.search(
            [('code', 'like', 'GO-%')], order=[('code', 'ASC')])
        bought.name = 'GO bought'
        bought.save()
        scenario = create_scenario('GO', [email_activity(
                    delay=dt.timedelta(days=1))],
            goal=PYSONEncoder().encode([('name', 'like', '%bought')]))
        server = process([scenario])
        self.assertEqual(server.messages, [])
        converted = Record.search([
                ('scenario', '=', scenario.id),
                ('converted', '!=', None)])
        self.assertEqual([r.record for r in converted], [bought])
        self.assertEqual(
            sorted(ra.state for ra in record_activities_of(scenario)),
            ['cancelled', 'waiting', 'waiting'])

        later.name = 'GO also bought'
        later.save()
        process([scenario])
        self.assertEqual(
            sorted(ra.state for ra in record_activities_of(scenario)),
            ['cancelled', 'cancelled', 'waiting'])
        scenario = scenario.__class__(scenario.id)
        self.assertEqual(scenario.record_count_converted, 2)
        self.assertEqual(scenario.conversion_rate, 0.67)
        self.assertTrue(scenario.conversion_rate_trend)
        row, = Report.search([('scenario', '=', scenario.id)])
        self.assertEqual(row.record_count_converted, 2)
        self.assertAlmostEqual(row.conversion_rate, 2 / 3)

    @with_transaction()
    def test_goal_invalid(self):
        "A goal that is not a domain of the model is refused with the reason"
        create_parties('GI', 1)
        with self.assertRaisesRegex(ValidationError, 'goal.*not valid'):
            create_scenario('GI', [email_activity()], run=False,
                goal=PYSONEncoder().encode([('no_such_field', '=', 1)]))
