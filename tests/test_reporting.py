# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The reports on a small run whose counts are known, and the names that
sites of Tryton's own module rely on"""
import datetime as dt

from lxml import etree

from trytond.modules.marketing_automation.tests.tools import (
    DatabaseTestCase, StatementCounter, create_parties, create_scenario,
    email_activity)
from trytond.pool import Pool
from trytond.pyson import PYSONDecoder
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

MODULE = 'marketing_automation'
# XML id: model, from INTERFACE.md
XML_IDS = {
    'act_activity_tree': 'ir.action.act_window',
    'act_activity_tree_view1': 'ir.action.act_window.view',
    'act_activity_tree_view2': 'ir.action.act_window.view',
    'act_activity_tree_keyword1': 'ir.action.keyword',
    'act_activity_tree_keyword2': 'ir.action.keyword',
    'act_record_form': 'ir.action.act_window',
    'act_record_form_keyword1': 'ir.action.keyword',
    'act_record_activity_form': 'ir.action.act_window',
    'act_record_activity_form_keyword1': 'ir.action.keyword',
    'act_record_activity_form_keyword2': 'ir.action.keyword',
    'act_scenario_form_domain_stopped': 'ir.action.act_window.domain',
    'report_unsubscribe': 'ir.action.report',
    'ir_email_view_form': 'ir.ui.view',
    'act_ir_email_form_relate_activity': 'ir.action.act_window',
    'act_ir_email_form_relate_activity_keyword1': 'ir.action.keyword',
    'act_ir_email_form_relate_activity_view1': 'ir.action.act_window.view',
    'act_ir_email_form_relate_activity_view2': 'ir.action.act_window.view',
    'reporting_context_view_form': 'ir.ui.view',
    'msg_scenario_invalid_domain': 'ir.message',
    'msg_activity_invalid_condition': 'ir.message',
    'msg_activity_invalid_email_title': 'ir.message',
    'msg_activity_invalid_email_template': 'ir.message',
    'msg_activity_record_unique': 'ir.message',
    }
for kind in ['scenario', 'activity']:
    XML_IDS.update({
            'reporting_%s_view_list' % kind: 'ir.ui.view',
            'reporting_%s_view_graph_rate' % kind: 'ir.ui.view',
            'reporting_%s_view_graph_count' % kind: 'ir.ui.view',
            'act_reporting_%s' % kind: 'ir.action.act_window',
            'act_reporting_%s_view1' % kind: 'ir.action.act_window.view',
            'act_reporting_%s_view2' % kind: 'ir.action.act_window.view',
            'act_reporting_%s_view3' % kind: 'ir.action.act_window.view',
            'act_reporting_%s_keyword' % kind: 'ir.action.keyword',
            })


class ReportingTestCase(DatabaseTestCase):
    "Test the reports and the names kept from Tryton's own module"

    @with_transaction()
    def test_names_kept(self):
        "The XML ids, message ids and view anchors are there"
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        View = pool.get('ir.ui.view')
        data = {d.fs_id: d.model for d in ModelData.search([
                    ('module', '=', MODULE)])}
        self.assertEqual(
            {i: data.get(i) for i in XML_IDS}, XML_IDS)
        form = etree.fromstring(View(ModelData.get_id(
                    MODULE, 'activity_view_form')).arch)
        self.assertTrue(
            form.xpath('//page[@name="action"]//group[@id="email"]'))
        party = View.search([
                ('model', '=', 'party.party'),
                ('module', '=', MODULE)])
        self.assertTrue(any('id="marketing_automation"' in v.arch
                for v in party))

    def prepare(self, prefix='RP'):
        """Enrol 4 parties in January 2026 and 2 in March 2026, block one of
        each month; the activity ran for 4 of them, 2 opened, 1 clicked, and
        failed for 1 in March"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties(prefix, 6)
        scenario = create_scenario(
            prefix, [email_activity(delay=dt.timedelta(days=1))])
        Scenario.trigger([scenario])
        records = Record.search(
            [('scenario', '=', scenario.id)], order=[('id', 'ASC')])
        record = Record.__table__()
        table = RecordActivity.__table__()
        cursor = Transaction().connection.cursor()
        dates = [dt.datetime(2026, 1, 10, 12)] * 4 + [
            dt.datetime(2026, 3, 5, 12)] * 2
        for rec, date, blocked in zip(
                records, dates, [True, False, False, False, True, False]):
            cursor.execute(*record.update(
                    [record.create_date, record.blocked], [date, blocked],
                    where=record.id == rec.id))
        activity, = scenario.activities
        record_activities = RecordActivity.search(
            [('activity', '=', activity.id)], order=[('id', 'ASC')])
        for ra, state, at, opened, clicked in zip(record_activities,
                ['done', 'done', 'done', 'done', 'cancelled', 'failed'],
                [dt.datetime(2026, 1, 11, 9), dt.datetime(2026, 1, 11, 10),
                    dt.datetime(2026, 1, 12, 9), dt.datetime(2026, 3, 6, 9),
                    dt.datetime(2026, 3, 6, 9), dt.datetime(2026, 3, 6, 9)],
                [True, True, False, False, False, False],
                [True, False, False, False, False, False]):
            cursor.execute(*table.update(
                    [table.state, table.at, table.email_opened,
                        table.email_clicked],
                    [state, at, opened, clicked],
                    where=table.id == ra.id))
        return scenario, activity

    def read(self, model, period, key):
        pool = Pool()
        Report = pool.get(model)
        with Transaction().set_context(
                period=period, from_date=dt.date(2025, 12, 1),
                to_date=dt.date(2026, 12, 31)):
            reports = Report.search([], order=[('date', 'ASC')])
            with StatementCounter() as counter:
                rows = Report.read(list(map(int, reports)), key)
        rows.sort(key=lambda r: r['date'])
        return rows, counter.count

    @with_transaction()
    def test_reports(self):
        """Each figure of each report, by day, month and year, in a number
        of queries that does not grow with the rows"""
        scenario, activity = self.prepare()
        counts = {}
        names = ['date', 'scenario', 'record_count', 'record_count_blocked',
            'block_rate', 'failed_count']
        expected = {
            'year': [(dt.date(2026, 1, 1), 6, 2, round(2 / 6, 2), 1)],
            'month': [(dt.date(2026, 1, 1), 4, 1, 0.25, 0),
                (dt.date(2026, 3, 1), 2, 1, 0.5, 1)],
            'day': [(dt.date(2026, 1, 10), 4, 1, 0.25, 0),
                (dt.date(2026, 3, 5), 2, 1, 0.5, 1)],
            }
        for period, figures in expected.items():
            rows, count = self.read(
                'marketing.automation.reporting.scenario', period, names)
            counts['scenario', period] = count, names
            self.assertEqual([
                    (r['date'], r['record_count'], r['record_count_blocked'],
                        round(r['block_rate'], 2), r['failed_count'])
                    for r in rows if r['scenario'] == scenario.id],
                figures, period)

        names = ['date', 'activity', 'record_count', 'email_opened',
            'email_clicked', 'email_open_rate', 'email_click_rate',
            'email_click_through_rate', 'failed_count']
        expected = {
            'year': [(dt.date(2026, 1, 1), 4, 2, 1, 0.5, 0.25, 0.5, 1)],
            'month': [(dt.date(2026, 1, 1), 3, 2, 1, 0.67, 0.33, 0.5, 0),
                (dt.date(2026, 3, 1), 1, 0, 0, 0.0, 0.0, 0.0, 1)],
            'day': [(dt.date(2026, 1, 11), 2, 2, 1, 1.0, 0.5, 0.5, 0),
                (dt.date(2026, 1, 12), 1, 0, 0, 0.0, 0.0, 0.0, 0),
                (dt.date(2026, 3, 6), 1, 0, 0, 0.0, 0.0, 0.0, 1)],
            }
        for period, figures in expected.items():
            rows, count = self.read(
                'marketing.automation.reporting.activity', period, names)
            counts['activity', period] = count, names
            self.assertEqual([
                    (r['date'], r['record_count'], r['email_opened'],
                        r['email_clicked'],
                        round(r['email_open_rate'], 2),
                        round(r['email_click_rate'], 2),
                        round(r['email_click_through_rate'], 2),
                        r['failed_count'])
                    for r in rows if r['activity'] == activity.id],
                figures, period)

        # Twice the scenarios, records and rows
        self.prepare('RQ')
        for (kind, period), (count, names) in counts.items():
            _, again = self.read(
                'marketing.automation.reporting.' + kind, period, names)
            self.assertEqual(again, count, (kind, period))

    @with_transaction()
    def test_trends(self):
        "The trends are sparklines of the last periods"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        scenario, activity = self.prepare()
        with Transaction().set_context(period='month'):
            scenario = Scenario(scenario.id)
            activity = Activity(activity.id)
            for trend in [scenario.block_rate_trend,
                    activity.email_open_rate_trend,
                    activity.email_click_rate_trend,
                    activity.email_click_through_rate_trend]:
                self.assertEqual(len(trend), 12)

    @with_transaction()
    def test_statistics_are_the_reports(self):
        """The figures of the scenario and activity forms are those of their
        report with no date: a record with two bounced emails counts once
        in the scenario, twice in its activities"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        Record = pool.get('marketing.automation.record')
        RecordActivity = pool.get('marketing.automation.record.activity')
        scenario, activity = self.prepare()
        second, = Activity.create([email_activity(
                    name="Reminder", parent=str(activity))])
        first, = RecordActivity.search([
                ('activity', '=', activity.id), ('state', '=', 'done')],
            order=[('id', 'ASC')], limit=1)
        table = RecordActivity.__table__()
        record = Record.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*table.update(
                [table.email_bounced, table.email_complained],
                [True, True], where=table.id == first.id))
        RecordActivity.create([{
                    'record': first.record.id,
                    'activity': second.id,
                    'state': 'failed',
                    'at': dt.datetime(2026, 1, 13, 9),
                    'email_bounced': True,
                    }])
        cursor.execute(*record.update(
                [record.converted], [dt.datetime(2026, 1, 14)],
                where=record.id == first.record.id))

        def totals(model, key, id_, names):
            Report = pool.get(model)
            with Transaction().set_context(period='year'):
                rows = Report.search_read(
                    [(key, '=', id_)], fields_names=list(names))
            return {n: sum(r[n] for r in rows) for n in names}

        def rate(numerator, denominator):
            return round(numerator / denominator, 2) if denominator else 0.

        counts = ['record_count', 'record_count_blocked', 'email_bounced',
            'email_complained', 'record_count_converted', 'failed_count']
        report = totals('marketing.automation.reporting.scenario',
            'scenario', scenario.id, counts)
        scenario = Scenario(scenario.id)
        self.assertEqual(
            {n: getattr(scenario, n) for n in counts}, report)
        self.assertEqual(
            (scenario.email_bounced, scenario.record_count_converted), (1, 1))
        # One failure in the activity, one in its child
        self.assertEqual(scenario.failed_count, 2)
        self.assertEqual(scenario.block_rate, rate(
                report['record_count_blocked'], report['record_count']))
        self.assertEqual(scenario.conversion_rate, rate(
                report['record_count_converted'], report['record_count']))

        counts = ['record_count', 'email_opened', 'email_clicked',
            'email_opened_machine', 'email_filtered', 'email_bounced',
            'email_complained', 'failed_count']
        for each in [activity, second]:
            report = totals('marketing.automation.reporting.activity',
                'activity', each.id, counts)
            each = Activity(each.id)
            self.assertEqual({n: getattr(each, n) for n in counts}, report)
            self.assertEqual(each.email_open_rate, rate(
                    report['email_opened'], report['record_count']))
            self.assertEqual(each.email_click_rate, rate(
                    report['email_clicked'], report['record_count']))
            self.assertEqual(each.email_click_through_rate, rate(
                    report['email_clicked'], report['email_opened']))
        self.assertEqual(
            sum(Activity(a).email_bounced for a in [activity, second]), 2)
        self.assertEqual(
            [Activity(a).failed_count for a in [activity, second]], [1, 1])

    @with_transaction()
    def test_failed_relate(self):
        """The relate Failed Record Activities of a scenario and of an
        activity opens as many record activities as the Failed figure, all
        failed and with their reason"""
        pool = Pool()
        Action = pool.get('ir.action.act_window')
        Keyword = pool.get('ir.action.keyword')
        ModelData = pool.get('ir.model.data')
        Scenario = pool.get('marketing.automation.scenario')
        Activity = pool.get('marketing.automation.activity')
        RecordActivity = pool.get('marketing.automation.record.activity')
        scenario, activity = self.prepare()
        table = RecordActivity.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*table.update([table.error], ["No address"],
                where=table.state == 'failed'))
        action = Action(ModelData.get_id(
                MODULE, 'act_record_activity_failed'))
        self.assertEqual(
            {k.model for k in Keyword.search([
                        ('action', '=', action.action.id),
                        ('keyword', '=', 'form_relate')])},
            {'marketing.automation.scenario,-1',
                'marketing.automation.activity,-1'})
        # The failures of another scenario are not listed
        self.prepare('RF')
        for record in [Scenario(scenario.id), Activity(activity.id)]:
            domain = PYSONDecoder({
                    'active_model': record.__name__,
                    'active_ids': [record.id],
                    }).decode(action.pyson_domain)
            found = RecordActivity.search(domain)
            self.assertEqual(len(found), record.failed_count)
            self.assertEqual(record.failed_count, 1)
            self.assertEqual(
                [(ra.state, ra.error) for ra in found],
                [('failed', "No address")])
