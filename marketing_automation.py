# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
import datetime as dt
import logging
import secrets
from collections import defaultdict

from sql import Cast, Conflict, For, Literal, Null
from sql.aggregate import Max
from sql.conditionals import Coalesce
from sql.functions import Function, Overlay, Substring
from sql.operators import Concat, Exists

from trytond import backend
from trytond.i18n import gettext
from trytond.model import Index, ModelSQL, ModelView, Unique, Workflow, fields
from trytond.pool import Pool
from trytond.pyson import Bool, Eval, PYSONDecoder
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from . import reporting, tree
from .batch import batch_size, sliced
from .deferral import TIMEZONES, WEEKDAYS, Window
from .domain import check_domain
from .exceptions import (
    BlockedError, DomainError, GoalError, RunError, ScenarioModelError,
    WindowError)
from .mixin import (
    MarketingAutomationMixin, by_company, company_context, has_company)

logger = logging.getLogger(__name__)


def current_time():
    "Return the time to store: the database keeps no microsecond"
    return dt.datetime.now().replace(microsecond=0)


def check_domains(scenarios, name, refusal):
    """Raise refusal(scenario, exception) for the first scenario whose field
    name is set and is not a domain of its model (a required field is
    checked apart)"""
    for scenario in scenarios:
        text = getattr(scenario, name)
        if not text:
            continue
        try:
            check_domain(scenario.model, text)
        except Exception as exception:
            raise refusal(scenario, exception) from exception


def invalid_domain(scenario, exception):
    "Return the error of the domain of scenario that fails"
    return DomainError(gettext(
            'marketing_automation.msg_scenario_invalid_domain',
            scenario=scenario.rec_name, exception=exception))


def invalid_goal(scenario, exception):
    "Return the error of the goal of scenario that fails"
    return GoalError(gettext(
            'marketing_automation.msg_scenario_invalid_goal',
            scenario=scenario.rec_name, exception=exception))


def new_token():
    "Return an unguessable token of 128 bits"
    return secrets.token_hex(16)


class _GenRandomUuid(Function):
    __slots__ = ()
    _function = 'GEN_RANDOM_UUID'


class _Replace(Function):
    __slots__ = ()
    _function = 'REPLACE'


class _Token(Function):
    __slots__ = ()
    _function = 'MARKETING_AUTOMATION_TOKEN'


def new_token_sql():
    """Return an SQL expression that gives each row a new token as
    new_token does: 128 random bits in 32 lowercase hexadecimal digits"""
    if backend.name == 'postgresql':
        # A version 4 UUID has 122 random bits, from the strong random
        # source of the server: 5 random digits of a second one replace the
        # version digit and the variant digit of the first
        def uuid():
            return Cast(_GenRandomUuid(), 'VARCHAR')
        return Overlay(_Replace(uuid(), '-', ''), Substring(uuid(), 1, 5),
            13, 5)
    # Python's own, called by SQLite for each row
    Transaction().connection.create_function(
        _Token._function, 0, new_token)
    return _Token()


def marketing_models():
    pool = Pool()
    return sorted(
        name for name, Model in pool.iterobject()
        if issubclass(Model, MarketingAutomationMixin))


def get_models():
    IrModel = Pool().get('ir.model')
    return [(m, IrModel.get_name(m)) for m in marketing_models()]


class Scenario(Workflow, ModelSQL, ModelView):
    __name__ = 'marketing.automation.scenario'

    name = fields.Char("Name", translate=True)
    public_name = fields.Char(
        "Public Name", translate=True,
        help="The name that the recipients see, on the unsubscribe page.\n"
        "Leave empty to show the name.")
    model = fields.Selection(
        'get_models', "Model", required=True,
        states={
            'readonly': (Eval('state') != 'draft') | Eval('has_records'),
            })
    domain = fields.Char(
        "Domain", required=True,
        states={
            'readonly': Eval('state') == 'running',
            },
        help="A PYSON domain that picks the records to enrol.")
    goal = fields.Char(
        "Goal",
        help="A domain on the records: a record that matches it is "
        "converted, and its waiting activities are cancelled.\n"
        "Leave empty for no goal.")
    activities = fields.One2Many(
        'marketing.automation.activity', 'parent', "Activities")
    records = fields.One2Many(
        'marketing.automation.record', 'scenario', "Records", readonly=True)
    has_records = fields.Function(
        fields.Boolean("Has Records"), 'get_has_records')
    unsubscribed_parties = fields.Many2Many(
        'party.party-unsubscribed-marketing.automation.scenario',
        'scenario', 'party', "Unsubscribed Parties", readonly=True)
    tracking = fields.Selection([
            ('full', "Opens and Clicks"),
            ('clicks', "Clicks Only"),
            ('aggregate', "Opens Counted per Activity"),
            ('none', "None"),
            ], "Tracking", required=True,
        help="What the emails track of their recipients: the open image and "
        "the tracked links; the tracked links only; only how many times "
        "the emails of each activity were opened, not by whom; or "
        "nothing. The unsubscribe link works in every case.")
    unsubscribable = fields.Boolean(
        "Unsubscribable",
        help="If checked, blocking a record also unsubscribes its party "
        "from the scenario for good.")

    # When the emails may go
    frequency_cap_exempt = fields.Boolean(
        "Exempt from Frequency Cap",
        help="Its emails are neither held back nor counted by the frequency "
        "cap: for scenarios of transactional emails.")
    window_weekdays = fields.MultiSelection(
        WEEKDAYS, "Sending Days", sort=False,
        help="The days on which emails may go.\n"
        "Leave empty to send at any time.")
    window_start = fields.Time(
        "Sending From",
        states={
            'invisible': ~Eval('window_weekdays'),
            })
    window_end = fields.Time(
        "Sending Until",
        states={
            'invisible': ~Eval('window_weekdays'),
            },
        help="Earlier than the start for hours that cross midnight.")
    window_timezone = fields.Selection(
        TIMEZONES, "Sending Time Zone", translate=False,
        states={
            'invisible': ~Eval('window_weekdays'),
            },
        help="Of the hours, when the party has none.\n"
        "The company's when empty.")

    # The statistics: the figures of the scenario report for all time
    record_count = fields.Function(
        fields.Integer("Records"), 'get_statistics')
    record_count_blocked = fields.Function(
        fields.Integer("Records Blocked"), 'get_statistics')
    block_rate = fields.Function(
        fields.Float("Block Rate", digits=(1, 2)), 'get_statistics')
    block_rate_trend = fields.Function(
        fields.Char("Block Rate Trend"), 'get_trend')
    failed_count = fields.Function(
        fields.Integer(
            "Failed",
            help="The record activities of its records that failed: the "
            "reason is on each one."),
        'get_statistics')
    email_bounced = fields.Function(
        fields.Integer(
            "Records Bounced", help="The records an email of which bounced."),
        'get_statistics')
    email_complained = fields.Function(
        fields.Integer(
            "Records Complained",
            help="The records an email of which was reported as spam."),
        'get_statistics')
    record_count_converted = fields.Function(
        fields.Integer(
            "Records Converted", help="The records that met the goal."),
        'get_statistics')
    conversion_rate = fields.Function(
        fields.Float("Conversion Rate", digits=(1, 2)), 'get_statistics')
    conversion_rate_trend = fields.Function(
        fields.Char("Conversion Rate Trend"), 'get_trend')

    state = fields.Selection([
            ('draft', "Draft"),
            ('running', "Running"),
            ('stopped', "Stopped"),
            ], "State", required=True, readonly=True, sort=False)

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_indexes.add(
            Index(t, (t.state, Index.Equality(cardinality='low')),
                where=t.state == 'running'))
        # The fields that hold a domain of the records, with the function
        # that returns the error refusing an invalid one
        cls._domains = {
            'domain': invalid_domain,
            'goal': invalid_goal,
            }
        cls._transitions |= {
            ('draft', 'running'),
            ('running', 'stopped'),
            ('stopped', 'draft'),
            }
        cls._buttons.update({
                'draft': {
                    'invisible': Eval('state') != 'stopped',
                    'depends': ['state'],
                    },
                'run': {
                    'invisible': Eval('state') != 'draft',
                    'depends': ['state'],
                    },
                'stop': {
                    'invisible': Eval('state') != 'running',
                    'depends': ['state'],
                    },
                'dry_run': {},
                'test_mode': {},
                })

    @classmethod
    def default_domain(cls):
        return '[]'

    @classmethod
    def default_tracking(cls):
        return 'full'

    @classmethod
    def default_state(cls):
        return 'draft'

    @classmethod
    def default_unsubscribable(cls):
        return False

    @classmethod
    def default_frequency_cap_exempt(cls):
        return False

    @classmethod
    def get_models(cls):
        return get_models()

    @property
    def pyson_domain(self):
        return PYSONDecoder({}).decode(self.domain)

    @property
    def pyson_goal(self):
        if self.goal:
            return PYSONDecoder({}).decode(self.goal)

    @property
    def window(self):
        if self.window_weekdays:
            return Window(
                frozenset(map(int, self.window_weekdays)),
                self.window_start, self.window_end)

    @classmethod
    def get_has_records(cls, scenarios, name):
        with_records = cls._with_records(scenarios)
        return {s.id: s.id in with_records for s in scenarios}

    @classmethod
    def _with_records(cls, scenarios):
        "Return the ids of the scenarios that have records"
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        record = Record.__table__()
        table = cls.__table__()
        cursor = Transaction().connection.cursor()
        ids = set()
        for sub_ids in sliced(list(map(int, scenarios))):
            # The first record is enough: a scenario may have millions
            cursor.execute(*table.select(table.id,
                    where=reduce_ids(table.id, sub_ids)
                    & Exists(record.select(Literal(1),
                            where=record.scenario == table.id))))
            ids.update(i for i, in cursor)
        return ids

    @classmethod
    def get_statistics(cls, scenarios, names):
        """Return the figures of the scenario report for all time, but the
        records that the domain of a draft scenario matches now"""
        pool = Pool()
        Report = pool.get('marketing.automation.reporting.scenario')
        values = reporting.figures(
            Report, 'scenario', list(map(int, scenarios)), names)
        if 'record_count' in names:
            for scenario in scenarios:
                if scenario.state == 'draft':
                    values['record_count'][scenario.id] = (
                        scenario._count_matching())
        return values

    def _count_matching(self):
        pool = Pool()
        try:
            Model = pool.get(self.model)
            return Model.search_count(self.pyson_domain)
        except Exception:
            return None

    @classmethod
    def get_trend(cls, scenarios, names):
        pool = Pool()
        Report = pool.get('marketing.automation.reporting.scenario')
        return reporting.trends(
            Report, 'scenario', list(map(int, scenarios)), names)

    @classmethod
    def check_modification(
            cls, mode, scenarios, values=None, external=False):
        super().check_modification(
            mode, scenarios, values=values, external=external)
        if mode == 'write' and 'model' in values:
            changed = [s for s in scenarios if s.model != values['model']]
            with_records = cls._with_records(changed)
            for scenario in changed:
                if scenario.id in with_records:
                    raise ScenarioModelError(gettext(
                            'marketing_automation.msg_scenario_model_records',
                            scenario=scenario.rec_name))

    @classmethod
    def validate_fields(cls, scenarios, field_names):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        super().validate_fields(scenarios, field_names)
        cls.check_domain(scenarios, field_names)
        cls.check_window(scenarios, field_names)
        if field_names and 'model' in field_names:
            # What the activities read of the records depends on the model
            activities = cls._activities(scenarios)
            Activity.check_condition(activities)
            Activity.check_email(activities)
        if not field_names or 'tracking' in field_names:
            Activity.check_event(cls._activities(scenarios))

    @classmethod
    def _activities(cls, scenarios):
        "Return the activities of the trees of scenarios"
        # The tree is shallow so walking it costs little
        activities, todo = [], [a for s in scenarios for a in s.activities]
        while todo:
            activity = todo.pop()
            activities.append(activity)
            todo.extend(activity.children)
        return activities

    @classmethod
    def check_domain(cls, scenarios, field_names=None):
        "Check the fields of _domains: domains of the records"
        if field_names and not (field_names & (set(cls._domains) | {'model'})):
            return
        for name, refusal in cls._domains.items():
            check_domains(scenarios, name, refusal)

    @classmethod
    def check_window(cls, scenarios, field_names=None):
        if field_names and not (
                field_names & {'window_start', 'window_end'}):
            return
        for scenario in scenarios:
            if (scenario.window_start is not None
                    and scenario.window_start == scenario.window_end):
                raise WindowError(gettext(
                        'marketing_automation.msg_scenario_window_empty',
                        scenario=scenario.rec_name))

    @classmethod
    def copy(cls, scenarios, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('state', 'draft')
        default.setdefault('records')
        default.setdefault('unsubscribed_parties')
        return super().copy(scenarios, default=default)

    @classmethod
    @ModelView.button
    @Workflow.transition('draft')
    def draft(cls, scenarios):
        pass

    @classmethod
    @ModelView.button
    @Workflow.transition('running')
    def run(cls, scenarios):
        for scenario in scenarios:
            # It would enrol records and send them nothing
            if not scenario.activities:
                raise RunError(gettext(
                        'marketing_automation.msg_scenario_run_no_activity',
                        scenario=scenario.rec_name))

    @classmethod
    @ModelView.button
    @Workflow.transition('stopped')
    def stop(cls, scenarios):
        pass

    @classmethod
    @ModelView.button_action('marketing_automation.wizard_scenario_dry_run')
    def dry_run(cls, scenarios):
        pass

    @classmethod
    @ModelView.button_action(
        'marketing_automation.wizard_scenario_test_mode')
    def test_mode(cls, scenarios):
        pass

    @classmethod
    def trigger(cls, scenarios=None):
        """Enrol the new matching records of the running scenarios

        With a company in the context, as in a run of a cron per company,
        only the records of that company for a model that has one."""
        if scenarios is None:
            scenarios = cls.search([('state', '=', 'running')])
        cursor = Transaction().connection.cursor()
        for scenario in scenarios:
            if scenario.state != 'running':
                continue
            # A savepoint keeps a failing domain from aborting the others
            cursor.execute('SAVEPOINT marketing_automation_enrol')
            try:
                count = scenario.enrol()
            except Exception:
                cursor.execute(
                    'ROLLBACK TO SAVEPOINT marketing_automation_enrol')
                logger.exception(
                    "could not enrol records in scenario %s", scenario.id)
            else:
                cursor.execute(
                    'RELEASE SAVEPOINT marketing_automation_enrol')
                if count:
                    logger.info(
                        "enrolled %s records in scenario %s",
                        count, scenario.id)

    def enrol(self):
        "Enrol the matching records that are not enrolled yet"
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        self._lock_enrolment()
        last = Record.last_id()
        count = Record.enrol(self, self._matching(), last)
        if count and self.goal:
            # Those that met the goal already are not sent anything
            self.convert_records(after=last)
        return count

    @classmethod
    def check_goals(cls, scenarios=None):
        "Convert the records of the running scenarios that met their goal"
        if scenarios is None:
            scenarios = cls.search([
                    ('state', '=', 'running'),
                    ('goal', '!=', None),
                    ])
        count = 0
        for scenario in scenarios:
            if scenario.state == 'running' and scenario.goal:
                count += scenario.convert_records()
        return count

    def convert_records(self, after=0):
        """Convert by batches the records that meet the goal and return how
        many; with after, only the records of greater id"""
        pool = Pool()
        Model = pool.get(self.model)
        Record = pool.get('marketing.automation.record')
        record = Record.__table__()
        cursor = Transaction().connection.cursor()
        goal, prefix = self.pyson_goal, self.model + ','
        last, count = after, 0
        while True:
            # Walk by ids, as the conversions change what is left
            cursor.execute(*record.select(record.id, record.record,
                    where=(record.scenario == self.id)
                    & (record.converted == Null)
                    & (record.id > last),
                    order_by=[record.id.asc], limit=batch_size()))
            rows = cursor.fetchall()
            if not rows:
                break
            last = rows[-1][0]
            by_resource = {
                int(r[len(prefix):]): i for i, r in rows
                if r and r.startswith(prefix)}
            converted = []
            # The goal is met in the company of each record
            for company, ids in by_company(Model, by_resource).items():
                with Transaction().set_context(company_context(company)):
                    met = Model.search([
                            goal, ('id', 'in', sorted(ids)),
                            ], order=[])
                converted.extend(by_resource[m.id] for m in met)
            Record.convert(converted)
            count += len(converted)
        return count

    def _matching(self):
        """Return the query of the ids of the records that the domain
        matches and whose party did not unsubscribe"""
        pool = Pool()
        Model = pool.get(self.model)
        domain = [
            self.pyson_domain,
            ('marketing_party', 'not in', self._unsubscribed_parties()),
            ]
        company = Transaction().context.get('company')
        if company and has_company(Model):
            # A cron with companies runs once for each: each run enrols the
            # records of its company
            domain.append(('company', '=', company))
        return Model.search(domain, order=[], query=True)

    def candidates(self):
        """Yield by batches the ids of the records that the domain matches
        and whose party did not unsubscribe"""
        matching = self._matching()
        cursor = Transaction().connection.cursor()
        last = 0
        while True:
            # Walk by ids to stream the candidates without materialising
            cursor.execute(*matching.select(matching.id,
                    where=matching.id > last,
                    order_by=[matching.id.asc], limit=batch_size()))
            ids = [i for i, in cursor]
            if not ids:
                break
            last = ids[-1]
            yield ids

    def _lock_enrolment(self):
        """Keep two runs from enrolling in the same scenario at once

        The unique constraint on records is the last guard."""
        table = self.__table__()
        transaction = Transaction()
        if transaction.database.has_select_for():
            cursor = transaction.connection.cursor()
            cursor.execute(*table.select(table.id,
                    where=table.id == self.id,
                    for_=For('UPDATE', nowait=True)))

    def _unsubscribed_parties(self):
        pool = Pool()
        Unsubscribed = pool.get(
            'party.party-unsubscribed-marketing.automation.scenario')
        unsubscribed = Unsubscribed.__table__()
        return unsubscribed.select(
            unsubscribed.party, where=unsubscribed.scenario == self.id)


class Record(ModelSQL, ModelView):
    __name__ = 'marketing.automation.record'

    scenario = fields.Many2One(
        'marketing.automation.scenario', "Scenario",
        required=True, ondelete='CASCADE')
    record = fields.Reference(
        "Record", selection='get_models', required=True)
    party = fields.Function(
        fields.Many2One('party.party', "Party"),
        'get_party', searcher='search_party')
    blocked = fields.Boolean(
        "Blocked", readonly=True,
        help="A blocked record gets nothing more from the scenario.\n"
        "Set by the Block button.")
    converted = fields.DateTime(
        "Converted", readonly=True,
        help="When the record met the goal of the scenario.")
    blocked_date = fields.DateTime(
        "Blocked On", readonly=True,
        help="When the record was blocked.")
    # How and when the record left its scenario, as the party form shows it
    enrolled_date = fields.Function(
        fields.DateTime(
            "Enrolled On", help="When the record entered the scenario."),
        'get_enrolled_date')
    left = fields.Function(
        fields.Selection([
                (None, ""),
                ('converted', "Converted"),
                ('blocked', "Blocked"),
                ('unsubscribed', "Unsubscribed"),
                ], "Left As",
            help="How the record left the scenario: it met the goal, it was "
            "blocked, or its party unsubscribed from the scenario for good.\n"
            "Empty while the record is in the scenario."),
        'get_left')
    left_date = fields.Function(
        fields.DateTime("Left On", help="When the record left the scenario."),
        'get_left')
    uuid = fields.Char("UUID", readonly=True, strip=False)
    record_activities = fields.One2Many(
        'marketing.automation.record.activity', 'record', "Activities",
        readonly=True)

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_constraints = [
            ('scenario_record_unique', Unique(t, t.scenario, t.record),
                'marketing_automation.msg_record_scenario_record_unique'),
            ('uuid_unique', Unique(t, t.uuid),
                'marketing_automation.msg_record_uuid_unique'),
            ]
        # The rows of the scenario report, a probe by scenario and period;
        # its statistics tell PostgreSQL how few days the figures group by
        cls._sql_indexes.add(
            Index(t,
                (t.scenario, Index.Range()),
                (fields.Date("Day").sql_cast(t.create_date), Index.Range())))
        cls._buttons.update({
                'block': {
                    'invisible': Bool(Eval('blocked')),
                    'depends': ['blocked'],
                    },
                })

    def get_rec_name(self, name):
        return self.record.rec_name if self.record else self.uuid

    def get_party(self, name):
        party = self.record.marketing_party if self.record else None
        return party.id if party else None

    def get_enrolled_date(self, name):
        return self.create_date.replace(microsecond=0)

    @classmethod
    def get_left(cls, records, names):
        "Return how and when each record left: unsubscribed before blocked"
        pool = Pool()
        Unsubscribed = pool.get(
            'party.party-unsubscribed-marketing.automation.scenario')
        unsubscribed = Unsubscribed.__table__()
        cursor = Transaction().connection.cursor()
        parties = {r.id: r.party.id for r in records if r.party}
        scenario_ids = {r.scenario.id for r in records}
        when = {}
        for sub_ids in sliced(sorted(set(parties.values()))):
            cursor.execute(*unsubscribed.select(
                    unsubscribed.party, unsubscribed.scenario,
                    unsubscribed.create_date,
                    where=reduce_ids(unsubscribed.party, sub_ids)
                    & unsubscribed.scenario.in_(sorted(scenario_ids))))
            for party, scenario, date in cursor:
                when[party, scenario] = date
        result = {n: {} for n in names}
        for record in records:
            key = (parties.get(record.id), record.scenario.id)
            if key in when:
                # The party may have unsubscribed by hand, with no block
                left, date = 'unsubscribed', record.blocked_date or when[key]
            elif record.blocked:
                left, date = 'blocked', record.blocked_date
            elif record.converted:
                left, date = 'converted', record.converted
            else:
                left, date = None, None
            if isinstance(date, str):
                date = dt.datetime.fromisoformat(date)
            if date:
                date = date.replace(microsecond=0)
            if 'left' in result:
                result['left'][record.id] = left
            if 'left_date' in result:
                result['left_date'][record.id] = date
        return result

    @classmethod
    def search_party(cls, name, clause):
        _, operator, operand, *extra = clause
        nested = clause[0][len(name):]
        domain = ['OR']
        for model in marketing_models():
            domain.append(
                ('record.marketing_party' + nested, operator, operand, model))
        return domain

    @classmethod
    def search_rec_name(cls, name, clause):
        # As get_rec_name: the name of the record of each model
        _, operator, operand, *extra = clause
        domain = ['OR']
        for model in marketing_models():
            domain.append(('record.rec_name', operator, operand, model))
        return domain

    @classmethod
    def default_blocked(cls):
        return False

    @classmethod
    def get_models(cls):
        return get_models()

    @classmethod
    def preprocess_values(cls, mode, values):
        values = super().preprocess_values(mode, values)
        if mode == 'create':
            # default methods are called once per create call
            values['uuid'] = new_token()
        return values

    @classmethod
    def check_modification(cls, mode, records, values=None, external=False):
        super().check_modification(
            mode, records, values=values, external=external)
        # The button also cancels what waits and unsubscribes the party
        if external and (
                (mode == 'write' and 'blocked' in values)
                or (mode == 'create' and any(r.blocked for r in records))):
            raise BlockedError(gettext(
                    'marketing_automation.msg_record_blocked_button'))

    @classmethod
    def copy(cls, records, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('uuid', None)
        default.setdefault('blocked', False)
        default.setdefault('converted')
        default.setdefault('blocked_date')
        default.setdefault('record_activities')
        return super().copy(records, default=default)

    @classmethod
    def last_id(cls):
        """Return the greatest id of the records: those enrolled next have
        greater ones, as the ids only grow"""
        record = cls.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*record.select(Coalesce(Max(record.id), 0)))
        return cursor.fetchone()[0]

    @classmethod
    def enrol(cls, scenario, matching, last):
        """Enrol in scenario the records of the query matching which are not
        enrolled yet, and schedule its root activities for them

        last is the last_id before: the lock of the scenario keeps the other
        enrolments in it out, so its records of greater id are those
        inserted here. Return the number of records enrolled."""
        record, enrolled = cls.__table__(), cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        now = current_time()

        # One pass in the database: the ORM would create record by record,
        # and rows sent from Python cost more to build and parse than to
        # insert
        reference = Concat(scenario.model + ',', Cast(matching.id, 'VARCHAR'))
        cursor.execute(*record.insert(
                [record.scenario, record.record, record.blocked, record.uuid,
                    record.create_uid, record.create_date],
                matching.select(
                    Literal(scenario.id), reference, Literal(False),
                    new_token_sql(), Literal(transaction.user), Literal(now),
                    # An anti-join rather than the conflict alone: a
                    # conflict would still draw an id from the sequence
                    where=~Exists(enrolled.select(Literal(1),
                            where=(enrolled.scenario == scenario.id)
                            & (enrolled.record == reference)))),
                # The unique constraint is the last guard
                on_conflict=Conflict(
                    record, indexed_columns=[record.scenario, record.record])))
        count = cursor.rowcount
        if count and any(scheduled != count for scheduled in tree.enrol(
                    scenario.id, last, scenario.activities, now)):
            # Never records left without their activities
            raise RuntimeError(
                "the ids of the records did not grow past %s" % last)
        return count

    @classmethod
    @ModelView.button
    def block(cls, records):
        "Block the records and unsubscribe their party where allowed"
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        Party = pool.get('party.party')
        records = [r for r in records if not r.blocked]
        if not records:
            return
        cls.write(records, {'blocked': True, 'blocked_date': current_time()})
        RecordActivity.cancel_waiting(records)

        unsubscribe = defaultdict(set)
        for record in records:
            if record.scenario.unsubscribable and record.record:
                party = getattr(record.record, 'marketing_party', None)
                if party:
                    unsubscribe[party].add(record.scenario.id)
        to_write = []
        for party, scenario_ids in unsubscribe.items():
            to_write.extend(([party], {
                        'marketing_scenario_unsubscribed': [
                            ('add', list(scenario_ids))],
                        }))
        if to_write:
            Party.write(*to_write)

    @classmethod
    def convert(cls, records):
        """Mark the records not yet converted as converted now and cancel
        their waiting activities"""
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        records = [r for r in cls.browse(records) if not r.converted]
        if not records:
            return
        cls.write(records, {'converted': current_time()})
        RecordActivity.cancel_waiting(records)
