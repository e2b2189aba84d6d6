# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Know who will get a scenario before it runs: the dry run

It lists the records that the trigger would enrol now, counts those it
leaves out and why, and those that the condition of each root activity
keeps, and lays out the tree for a sample record. It reads and writes
nothing else."""
import datetime as dt

from trytond.model import ModelView, fields
from trytond.pool import Pool
from trytond.tools import grouped_slice
from trytond.transaction import Transaction
from trytond.wizard import Button, StateView, Wizard

from . import sandbox, tree
from .activity import delay_text
from .marketing_automation import current_time, get_models
from .mixin import by_company, company_context
from .preview import record_models, sample

# The records to enrol that the dry run lists: the counts cover them all
LISTED = 100


class Who:
    """Who the trigger would enrol in a scenario now, and who it leaves out:
    the records already enrolled, blocked, or whose party unsubscribed"""

    def __init__(self):
        self.to_enrol = 0
        self.listed = []
        self.enrolled = 0
        self.blocked = 0
        self.unsubscribed = 0
        self.kept = {}


def who(scenario):
    """Return Who of scenario: the records to enrol, the first LISTED of
    them, those left out by reason, and how many of the records to enrol the
    condition of each root activity keeps, by activity"""
    pool = Pool()
    Model = pool.get(scenario.model)
    result = Who()
    result.kept = dict.fromkeys(scenario.activities, 0)
    # The records of every company, whichever the user works in, each one
    # checked in its company
    with Transaction().set_context(company=None):
        result.unsubscribed = Model.search_count([
                scenario.pyson_domain,
                ('marketing_party', 'in', scenario._unsubscribed_parties()),
                ])
        for ids in scenario.candidates():
            blocked = enrolments(scenario, ids)
            result.blocked += sum(1 for b in blocked.values() if b)
            result.enrolled += sum(1 for b in blocked.values() if not b)
            ids = [i for i in ids if i not in blocked]
            result.to_enrol += len(ids)
            result.listed.extend(ids[:LISTED - len(result.listed)])
            for company, company_ids in by_company(Model, ids).items():
                with Transaction().set_context(company_context(company)):
                    records = Model.browse(company_ids)
                    for activity in result.kept:
                        result.kept[activity] += sum(
                            1 for r in records if holds(activity, r))
    return result


def enrolments(scenario, ids):
    "Return whether it is blocked, for those of ids enrolled in scenario"
    pool = Pool()
    Record = pool.get('marketing.automation.record')
    references = ['%s,%s' % (scenario.model, i) for i in ids]
    result = {}
    for sub_references in grouped_slice(references):
        for record in Record.search([
                    ('scenario', '=', scenario.id),
                    ('record', 'in', list(sub_references)),
                    ], order=[]):
            result[record.record.id] = bool(record.blocked)
    return result


def holds(activity, record):
    "Tell whether the condition of activity holds for record"
    if not activity.condition:
        return True
    try:
        return bool(sandbox.condition_holds(activity.condition, record))
    except Exception:
        # The run would fail it
        return False


def timeline(activities, record, enrolment, start=None, depth=0):
    """Yield the steps of the tree of activities for record enrolled at
    enrolment: each activity with the time it would run at the earliest,
    the delays since the enrolment and what starts its delay"""
    if start is None:
        start = enrolment
    language = Transaction().language or 'en'
    for activity in activities:
        at = start + (activity.delay or dt.timedelta())
        yield {
            'activity': activity.id,
            'name': '\u2003' * depth + activity.rec_name,
            'at': at,
            'delay': delay_text(at - enrolment, language),
            'on': activity.on,
            'starts_on': tree.starts_on(activity),
            'condition': holds(activity, record) if record else None,
            }
        yield from timeline(
            activity.children, record, enrolment, at, depth + 1)


class DryRunRecord(ModelView):
    "Dry run record to enrol"
    __name__ = 'marketing.automation.scenario.dry_run.record'

    record = fields.Reference(
        "Record", selection='get_models', readonly=True)
    party = fields.Many2One('party.party', "Party", readonly=True)

    @classmethod
    def get_models(cls):
        return get_models()


class DryRunActivity(ModelView):
    "Dry run of a root activity"
    __name__ = 'marketing.automation.scenario.dry_run.activity'

    activity = fields.Many2One(
        'marketing.automation.activity', "Activity", readonly=True)
    record_count = fields.Integer(
        "Records Kept", readonly=True,
        help="How many of the records to enrol the condition keeps now.")


class DryRunStep(ModelView):
    "Dry run step of an activity"
    __name__ = 'marketing.automation.scenario.dry_run.step'

    activity = fields.Many2One(
        'marketing.automation.activity', "Activity", readonly=True)
    name = fields.Char("Name", readonly=True)
    at = fields.DateTime(
        "Runs At", readonly=True,
        help="When the activity runs for a record enrolled now, at the "
        "earliest: each event it waits for happening at once.")
    delay = fields.Char(
        "Since Enrolment", readonly=True,
        help="The delays added up along the branch since the enrolment.")
    on = fields.Selection('get_events', "On", readonly=True)
    starts_on = fields.Selection([
            ('delay', "After its delay"),
            ('event', "After its event and delay"),
            ('no_event', "If no event by the end of its delay"),
            ], "Runs", readonly=True)
    condition = fields.Boolean(
        "Condition Holds", readonly=True,
        help="Whether the condition holds for the sample record now.")

    @classmethod
    def get_events(cls):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        return Activity.fields_get(['on'])['on']['selection']


class DryRunShow(ModelView):
    "Dry run of a scenario"
    __name__ = 'marketing.automation.scenario.dry_run.show'

    scenario = fields.Many2One(
        'marketing.automation.scenario', "Scenario", readonly=True)
    enrol_count = fields.Integer(
        "Records to Enrol", readonly=True,
        help="How many records the domain matches now that the trigger "
        "would enrol: those left out below are not counted.")
    records = fields.One2Many(
        'marketing.automation.scenario.dry_run.record', None,
        "Who Would Enrol", readonly=True,
        help="The first %s records to enrol: open one by its link." % LISTED)
    enrolled_count = fields.Integer(
        "Already Enrolled", readonly=True,
        help="The records the domain matches that are enrolled already: "
        "a record enters a scenario only once.")
    blocked_count = fields.Integer(
        "Blocked", readonly=True,
        help="The records the domain matches that were enrolled and then "
        "blocked: they get nothing more from the scenario.")
    unsubscribed_count = fields.Integer(
        "Unsubscribed", readonly=True,
        help="The records the domain matches whose party unsubscribed from "
        "the scenario: it never enrols them again.")
    activities = fields.One2Many(
        'marketing.automation.scenario.dry_run.activity', None,
        "Root Activities", readonly=True)
    record = fields.Reference(
        "Sample Record", selection='get_record_models',
        help="The record for which the timeline is laid out.")
    steps = fields.One2Many(
        'marketing.automation.scenario.dry_run.step', None, "Timeline",
        readonly=True)

    @fields.depends('scenario')
    def get_record_models(self):
        return record_models(self.scenario)

    @fields.depends('scenario', 'record', 'steps')
    def on_change_record(self):
        if not self.scenario:
            self.steps = []
            return
        record = self.record if self.record and self.record.id else None
        self.steps = list(timeline(
                self.scenario.activities, record, current_time()))


class DryRun(Wizard):
    "Show what a scenario would do now, without doing it"
    __name__ = 'marketing.automation.scenario.dry_run'

    start = StateView(
        'marketing.automation.scenario.dry_run.show',
        'marketing_automation.scenario_dry_run_show_view_form', [
            Button("Close", 'end', 'tryton-close', default=True),
            ])

    def default_start(self, fields):
        scenario = self.record
        record = sample(scenario)
        pool = Pool()
        Model = pool.get(scenario.model)
        found = who(scenario)
        with Transaction().set_context(company=None):
            listed = Model.browse(found.listed)
            records = [{
                    'record': str(r),
                    'party': (
                        r.marketing_party.id if r.marketing_party else None),
                    } for r in listed]
        return {
            'scenario': scenario.id,
            'enrol_count': found.to_enrol,
            'records': records,
            'enrolled_count': found.enrolled,
            'blocked_count': found.blocked,
            'unsubscribed_count': found.unsubscribed,
            'activities': [
                {'activity': a.id, 'record_count': c}
                for a, c in found.kept.items()],
            'record': str(record) if record else None,
            'steps': list(timeline(
                    scenario.activities, record, current_time())),
            }
