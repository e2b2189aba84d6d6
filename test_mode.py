# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Run a scenario for one record, in test mode

The tree runs for the chosen record with its delays skipped: each email
goes as a test email to the address typed in. The marketer says what the
recipient does, open, click or nothing, to go down the branches. No
record is enrolled and nothing counts in a statistic or a report."""
import json

from trytond.i18n import gettext
from trytond.model import ModelView, fields
from trytond.pool import Pool
from trytond.pyson import Eval
from trytond.transaction import Transaction
from trytond.wizard import Button, StateTransition, StateView, Wizard

from . import tree
from .dry_run import holds
from .preview import record_models, sample, send_test, test_addresses

OPENED = {'email_opened'}
# A click implies an open
CLICKED = {'email_opened', 'email_clicked'}


class TestModeRun:
    """The run of the tree for a record in test mode: the activities that
    wait for an event and what happened so far"""

    def __init__(self, record, address, waiting=(), emails=(), log=''):
        self.record = record
        self.address = address
        self.waiting = list(waiting)
        self.emails = list(emails)
        self.lines = log.splitlines() if log else []

    def run(self, activities):
        "Run the activities and the children that wait for no event"
        for activity in activities:
            if not holds(activity, self.record):
                self.say(gettext(
                        'marketing_automation.msg_test_mode_condition',
                        activity=activity.rec_name))
                continue
            if activity.action == 'send_email':
                self.send(activity)
            elif activity.action:
                self.say(gettext(
                        'marketing_automation.msg_test_mode_action_skipped',
                        activity=activity.rec_name))
            for child in activity.children:
                if child.event:
                    self.waiting.append(child.id)
                else:
                    self.run([child])

    def send(self, activity):
        try:
            email, = send_test(activity, self.record, [self.address])
        except Exception as exception:
            self.say(gettext(
                    'marketing_automation.msg_test_mode_failed',
                    activity=activity.rec_name, exception=exception))
            return
        self.emails.append(email.id)
        self.say(gettext(
                'marketing_automation.msg_test_mode_sent',
                activity=activity.rec_name, subject=email.subject))

    def move_on(self, events):
        """Run the activities that wait for events and cancel their
        negative siblings, or when events is empty, as their delays run
        out, run the negative ones and cancel their positive siblings"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        waiting = Activity.browse(self.waiting)
        if events:
            due, cancelled = tree.moved_on(waiting, events)
        else:
            due = [a for a in waiting if a.negative]
            cancelled = tree.timed_out(due, waiting)
        for activity in cancelled:
            self.say(gettext(
                    'marketing_automation.msg_test_mode_cancelled',
                    activity=activity.rec_name))
        self.waiting = [
            a.id for a in waiting if a not in due and a not in cancelled]
        self.run(due)

    def say(self, line):
        "Add line to the log of the run"
        self.lines.append(line)

    @property
    def values(self):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        waiting = Activity.browse(self.waiting)
        events = dict(Activity.fields_get(['on'])['on']['selection'])
        return {
            'waiting': json.dumps(self.waiting),
            'waiting_activities': '\n'.join(
                '%s (%s)' % (a.rec_name, events[a.on]) for a in waiting),
            'emails': self.emails,
            'log': '\n'.join(self.lines),
            }


class TestModeStart(ModelView):
    "Test mode of a scenario"
    __name__ = 'marketing.automation.scenario.test_mode.start'

    scenario = fields.Many2One(
        'marketing.automation.scenario', "Scenario", readonly=True)
    record = fields.Reference(
        "Record", selection='get_record_models', required=True,
        help="The record to run the scenario for.")
    address = fields.Char(
        "Test Address", required=True,
        help="The address that receives the emails of the test.")

    @fields.depends('scenario')
    def get_record_models(self):
        return record_models(self.scenario)


class TestModeStep(ModelView):
    "Test mode step of a scenario"
    __name__ = 'marketing.automation.scenario.test_mode.step'

    log = fields.Text("Steps", readonly=True)
    waiting = fields.Char("Waiting", readonly=True)
    waiting_activities = fields.Text(
        "Waiting For an Event", readonly=True,
        states={
            'invisible': ~Eval('waiting_activities'),
            })
    emails = fields.Many2Many(
        'ir.email', None, None, "Test Emails", readonly=True)


class TestMode(Wizard):
    """Run a scenario for one record with its delays skipped, sending its
    emails to a test address"""
    __name__ = 'marketing.automation.scenario.test_mode'

    start = StateView(
        'marketing.automation.scenario.test_mode.start',
        'marketing_automation.scenario_test_mode_start_view_form', [
            Button("Cancel", 'end', 'tryton-cancel'),
            Button("Start", 'run_', 'tryton-forward', default=True),
            ])
    run_ = StateTransition()
    step = StateView(
        'marketing.automation.scenario.test_mode.step',
        'marketing_automation.scenario_test_mode_step_view_form', [
            Button("Close", 'end', 'tryton-close'),
            Button("No Event", 'no_event', 'tryton-forward',
                states={
                    'invisible': ~Eval('waiting_activities'),
                    }),
            Button("Opened", 'opened', 'tryton-forward',
                states={
                    'invisible': ~Eval('waiting_activities'),
                    }),
            Button("Clicked", 'clicked', 'tryton-forward', default=True,
                states={
                    'invisible': ~Eval('waiting_activities'),
                    }),
            ])
    opened = StateTransition()
    clicked = StateTransition()
    no_event = StateTransition()

    def default_start(self, fields):
        pool = Pool()
        User = pool.get('res.user')
        record = sample(self.record)
        # The marketer tests on themselves first
        user = User(Transaction().user)
        return {
            'scenario': self.record.id,
            'record': str(record) if record else None,
            'address': user.email or None,
            }

    def default_step(self, fields):
        return self._run().values

    def _run(self):
        step = self.step
        return TestModeRun(
            self.start.record, self.start.address,
            waiting=json.loads(getattr(step, 'waiting', None) or '[]'),
            emails=[e.id for e in getattr(step, 'emails', None) or []],
            log=getattr(step, 'log', None) or '')

    def _show(self, test_run):
        for name, value in test_run.values.items():
            setattr(self.step, name, value)
        return 'step'

    def transition_run_(self):
        self.start.address, = test_addresses(self.start.address)
        test_run = self._run()
        test_run.run(self.record.activities)
        return self._show(test_run)

    def transition_opened(self):
        test_run = self._run()
        test_run.move_on(OPENED)
        return self._show(test_run)

    def transition_clicked(self):
        test_run = self._run()
        test_run.move_on(CLICKED)
        return self._show(test_run)

    def transition_no_event(self):
        test_run = self._run()
        test_run.move_on(set())
        return self._show(test_run)
