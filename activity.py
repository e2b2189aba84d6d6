# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
import datetime as dt
import html
from collections import namedtuple

from babel.dates import format_timedelta

from trytond.cache import Cache
from trytond.i18n import gettext
from trytond.model import Index, ModelSQL, ModelView, fields
from trytond.pool import Pool
from trytond.pyson import Bool, Eval
from trytond.transaction import Transaction

from . import email_, reporting, sandbox, tree
from .exceptions import ConditionError, DelayError, EventError, TemplateError
from .marketing_automation import current_time

ChildEvent = namedtuple('ChildEvent', ['id', 'event', 'negative', 'delay'])


EMAIL_EVENTS = {'email_opened', 'email_clicked'}
# The events of an email that each tracking mode of a scenario sees
TRACKED = {
    'full': EMAIL_EVENTS,
    'clicks': {'email_clicked'},
    'aggregate': set(),
    'none': set(),
    }


def _email_states():
    return {
        'invisible': Eval('action') != 'send_email',
        }


class Activity(ModelSQL, ModelView):
    __name__ = 'marketing.automation.activity'
    # The routes move the tree on without reading it
    _children_cache = Cache(
        'marketing_automation.activity.children', context=False)

    name = fields.Char("Name", translate=True, required=True)
    parent = fields.Reference(
        "Parent", [
            ('marketing.automation.scenario', "Scenario"),
            ('marketing.automation.activity', "Activity"),
            ], required=True)
    children = fields.One2Many(
        'marketing.automation.activity', 'parent', "Children")
    scenario = fields.Function(
        fields.Many2One('marketing.automation.scenario', "Scenario"),
        'get_scenario')
    parent_action = fields.Function(
        fields.Selection('get_parent_actions', "Parent Action"),
        'on_change_with_parent_action')
    event = fields.Selection([
            (None, ""),
            ('email_opened', "Email Opened"),
            ('email_clicked', "Email Clicked"),
            ], "Event")
    negative = fields.Boolean(
        "Negative",
        help="If checked, the activity runs when the event has not happened "
        "by the end of the delay.")
    on = fields.Function(fields.Selection([
                (None, ""),
                ('email_opened', "Opened"),
                ('email_opened_not', "Not Opened"),
                ('email_clicked', "Clicked"),
                ('email_clicked_not', "Not Clicked"),
                ], "On",
            # Only the children of an action wait for its events
            states={
                'invisible': ~Eval('parent_action'),
                },
            help="The event of the parent's email that the activity "
            "waits for."),
        'get_on', setter='set_on')
    condition = fields.Char(
        "Condition",
        help="A PYSON expression evaluated with 'self' bound to the record; "
        "the activity is cancelled when it is false.")
    delay = fields.TimeDelta(
        "Delay",
        states={
            'required': Bool(Eval('negative')),
            },
        help="How long to wait before running the activity, in days and "
        "hours:minutes: \"2d 04:30\" is two days and four and a half "
        "hours, \"00:15\" a quarter of an hour.")
    delay_text = fields.Function(
        fields.Char("Delay"), 'on_change_with_delay_text')
    action = fields.Selection([
            (None, ""),
            ('send_email', "Send Email"),
            ], "Action")
    email_from = fields.Char(
        "From", translate=True,
        states={
            'invisible': Eval('action') != 'send_email',
            },
        help="Leave empty for the value of the configuration file.")
    email_title = fields.Char(
        "Email Title", translate=True,
        states={
            'invisible': Eval('action') != 'send_email',
            'required': Eval('action') == 'send_email',
            },
        help="A Genshi text template with 'record' in its context.")
    email_template = fields.Text(
        "Email Template", translate=True,
        states={
            'invisible': Eval('action') != 'send_email',
            'required': Eval('action') == 'send_email',
            },
        help="A Genshi HTML template with 'record' in its context.\n"
        "Use href=\"unsubscribe\" for the unsubscribe link.")

    # The statistics: the figures of the activity report for all time
    record_count = fields.Function(
        fields.Integer("Records"), 'get_statistics')
    failed_count = fields.Function(fields.Integer(
            "Failed",
            help="The records for which the activity failed: the reason is "
            "on each failed record activity."),
        'get_statistics')
    email_opened = fields.Function(fields.Integer(
            "Emails Opened", states=_email_states()), 'get_statistics')
    email_opened_machine = fields.Function(fields.Integer(
            "Emails Opened by Machine", states=_email_states(),
            help="Opens by privacy proxies: they move no branch."),
        'get_statistics')
    email_clicked = fields.Function(fields.Integer(
            "Emails Clicked", states=_email_states()), 'get_statistics')
    email_filtered = fields.Function(fields.Integer(
            "Emails Filtered", states=_email_states(),
            help="Emails on which an open or a click was ignored as a "
            "scanner's, a prefetch's or too early: they move no branch."),
        'get_statistics')
    email_bounced = fields.Function(fields.Integer(
            "Emails Bounced", states=_email_states()), 'get_statistics')
    email_complained = fields.Function(fields.Integer(
            "Emails Complained", states=_email_states()), 'get_statistics')
    email_open_rate = fields.Function(fields.Float(
            "Email Open Rate", digits=(1, 2), states=_email_states()),
        'get_statistics')
    email_click_rate = fields.Function(fields.Float(
            "Email Click Rate", digits=(1, 2), states=_email_states()),
        'get_statistics')
    email_click_through_rate = fields.Function(fields.Float(
            "Email Click-Through Rate", digits=(1, 2),
            states=_email_states()),
        'get_statistics')
    email_open_rate_trend = fields.Function(fields.Char(
            "Email Open Rate Trend", states=_email_states()), 'get_trend')
    email_click_rate_trend = fields.Function(fields.Char(
            "Email Click Rate Trend", states=_email_states()), 'get_trend')
    email_click_through_rate_trend = fields.Function(fields.Char(
            "Email Click-Through Rate Trend", states=_email_states()),
        'get_trend')
    # The opens of the scenarios that count opens per activity
    email_opened_count = fields.Integer(
        "Opens Counted", readonly=True, states=_email_states(),
        help="How many times the emails were opened, counted without "
        "keeping by whom, when the scenario counts opens per activity.")
    email_open_token = fields.Char(
        "Open Token", readonly=True, strip=False)

    @classmethod
    def __setup__(cls):
        super().__setup__()
        t = cls.__table__()
        cls._sql_indexes.add(
            Index(t, (t.parent, Index.Equality())))
        cls._order.insert(0, ('name', 'ASC'))
        cls._buttons.update({
                'preview': {
                    'invisible': Eval('action') != 'send_email',
                    'depends': ['action'],
                    },
                'retry_failed': {
                    'invisible': ~Eval('failed_count'),
                    'depends': ['failed_count'],
                    },
                })

    @classmethod
    @ModelView.button_action(
        'marketing_automation.wizard_activity_preview')
    def preview(cls, activities):
        pass

    @classmethod
    @ModelView.button
    def retry_failed(cls, activities):
        "Run again at the next run the failed record activities"
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        RecordActivity.retry_failures(RecordActivity.search([
                    ('activity', 'in', list(map(int, activities))),
                    ('state', '=', 'failed'),
                    ], order=[('id', 'ASC')]))

    @classmethod
    def view_attributes(cls):
        return super().view_attributes() + [
            ('//group[@id="email"]', 'states', {
                    'invisible': Eval('action') != 'send_email',
                    }),
            ]

    @classmethod
    def children_events(cls, activity_id):
        "Return the events the children of activity_id wait for"
        children = cls._children_cache.get(activity_id)
        if children is None:
            children = [
                (c.id, c.event, bool(c.negative),
                    c.delay.total_seconds() if c.delay else 0)
                for c in cls(activity_id).children]
            cls._children_cache.set(activity_id, children)
        return [ChildEvent(*c) for c in children]

    @classmethod
    def create(cls, vlist):
        cls._children_cache.clear()
        activities = super().create(vlist)
        cls.reach_enrolled(activities)
        return activities

    @classmethod
    def write(cls, *args):
        cls._children_cache.clear()
        actions = iter(args)
        moved = [a for activities, values in zip(actions, actions)
            if 'parent' in values for a in activities]
        super().write(*args)
        cls.reach_enrolled(moved)

    @classmethod
    def reach_enrolled(cls, activities):
        """Schedule the activities at the root of a scenario for the records
        already enrolled that are neither blocked nor converted

        Else an activity added to a scenario that has records would reach
        only the records enrolled from then on."""
        now = current_time()
        for activity in activities:
            parent = activity.parent
            if (parent is not None and parent.id is not None
                    and parent.__name__ == 'marketing.automation.scenario'):
                tree.reach_enrolled(activity, parent.id, now)

    @classmethod
    def delete(cls, activities):
        cls._children_cache.clear()
        super().delete(activities)

    @classmethod
    def default_negative(cls):
        return False

    @classmethod
    def default_email_opened_count(cls):
        return 0

    @classmethod
    def default_email_template(cls):
        "A small email that works, for the marketer to start from"
        def text(message, **variables):
            text = gettext('marketing_automation.' + message, **variables)
            # $ starts an expression in Genshi
            return html.escape(text, quote=False).replace('$', '$$')
        # The name goes in after the text is escaped
        greeting = text('msg_email_template_greeting', name='\0').replace(
            '\0', '${record.rec_name}')
        return (
            '<html>\n<body>\n'
            '<p>%(greeting)s</p>\n'
            '<p><a href="https://www.example.com/">%(link)s</a></p>\n'
            '<p><a href="unsubscribe">%(unsubscribe)s</a></p>\n'
            '</body>\n</html>\n') % {
            'greeting': greeting,
            'link': text('msg_email_template_link'),
            'unsubscribe': text('msg_email_template_unsubscribe'),
            }

    @classmethod
    def copy(cls, activities, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('email_opened_count', 0)
        default.setdefault('email_open_token')
        return super().copy(activities, default=default)

    @classmethod
    def action_events(cls):
        """Return the events that the children of an activity can wait for,
        by action of the activity"""
        return {
            'send_email': {'email_opened', 'email_clicked'},
            }

    @classmethod
    def get_parent_actions(cls):
        return cls.fields_get(['action'])['action']['selection']

    @fields.depends('parent')
    def on_change_with_parent_action(self, name=None):
        if isinstance(self.parent, Activity):
            return self.parent.action

    def get_scenario(self, name):
        parent = self.parent
        # The tree is shallow so walking it costs little
        while isinstance(parent, Activity):
            parent = parent.parent
        return parent.id if parent else None

    @fields.depends('delay')
    def on_change_with_delay_text(self, name=None):
        if self.delay:
            return delay_text(self.delay, Transaction().language or 'en')

    @classmethod
    def get_statistics(cls, activities, names):
        "Return the figures of the activity report for all time"
        pool = Pool()
        Report = pool.get('marketing.automation.reporting.activity')
        return reporting.figures(
            Report, 'activity', list(map(int, activities)), names)

    @classmethod
    def get_trend(cls, activities, names):
        pool = Pool()
        Report = pool.get('marketing.automation.reporting.activity')
        return reporting.trends(
            Report, 'activity', list(map(int, activities)), names)

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

    def get_on(self, name):
        if self.event:
            return self.event + ('_not' if self.negative else '')

    @classmethod
    def set_on(cls, activities, name, value):
        if value and value.endswith('_not'):
            values = {'event': value[:-len('_not')], 'negative': True}
        else:
            values = {'event': value, 'negative': False}
        cls.write(activities, values)

    @fields.depends('event', 'negative')
    def on_change_with_on(self, name=None):
        return self.get_on(name)

    @classmethod
    def validate_fields(cls, activities, field_names):
        super().validate_fields(activities, field_names)
        cls.check_event(activities, field_names)
        cls.check_delay(activities, field_names)
        cls.check_condition(activities, field_names)
        cls.check_email(activities, field_names)

    @classmethod
    def check_event(cls, activities, field_names=None):
        if field_names and not (field_names & {'event', 'parent'}):
            return
        events = cls.action_events()
        for activity in activities:
            if (activity.event
                    and activity.event not in events.get(
                        activity.on_change_with_parent_action(), ())):
                raise EventError(gettext(
                        'marketing_automation.msg_activity_event_invalid',
                        activity=activity.rec_name,
                        event=activity.event))
            scenario = activity.scenario
            if (activity.event in EMAIL_EVENTS and scenario
                    and activity.event not in TRACKED[scenario.tracking]):
                raise EventError(gettext(
                        'marketing_automation.msg_activity_event_untracked',
                        activity=activity.rec_name,
                        scenario=scenario.rec_name,
                        event=activity.event))

    @classmethod
    def check_delay(cls, activities, field_names=None):
        if field_names and not (field_names & {'delay', 'negative'}):
            return
        for activity in activities:
            if activity.delay is not None and activity.delay < dt.timedelta():
                raise DelayError(gettext(
                        'marketing_automation.msg_activity_delay_negative',
                        activity=activity.rec_name))
            if activity.negative and not activity.delay:
                raise DelayError(gettext(
                        'marketing_automation'
                        '.msg_activity_negative_delay_required',
                        activity=activity.rec_name))

    @property
    def record_model(self):
        "The model of the records of the scenario, when it is known"
        scenario = self.scenario
        return scenario.model if scenario else None

    @classmethod
    def check_condition(cls, activities, field_names=None):
        # The fields of the record depend on the scenario
        if field_names and not (field_names & {'condition', 'parent'}):
            return
        for activity in activities:
            if not activity.condition:
                continue
            try:
                sandbox.check_condition(
                    activity.condition, activity.record_model)
            except Exception as exception:
                raise ConditionError(gettext(
                        'marketing_automation.msg_activity_invalid_condition',
                        activity=activity.rec_name,
                        exception=exception)) from exception

    @classmethod
    def check_email(cls, activities, field_names=None):
        pool = Pool()
        Lang = pool.get('ir.lang')
        lang = Lang.get()
        for name, parse in [
                ('email_title', sandbox.email_title),
                ('email_template', sandbox.email_template)]:
            if field_names and not (field_names & {name, 'parent'}):
                continue
            for activity in activities:
                text = getattr(activity, name)
                try:
                    if text:
                        sandbox.check_names(
                            text, parse,
                            sandbox.known_names(activity.email_context(lang)),
                            activity.record_model)
                # Genshi raises a bare Exception for some syntax it cannot
                # handle
                except Exception as e:
                    raise template_error(name, activity, e) from e

    def filter_due(self, record_activities):
        """Return those of record_activities for which the condition holds,
        and the error of each one for which it could not be evaluated"""
        if not self.condition:
            return list(record_activities), {}
        due, errors = [], {}
        for record_activity in record_activities:
            try:
                if sandbox.condition_holds(
                        self.condition, record_activity.record.record):
                    due.append(record_activity)
            except Exception as exception:
                errors[record_activity] = gettext(
                    'marketing_automation.msg_condition_failed',
                    activity=self.rec_name, exception=exception)
        return due, errors

    def email_context(self, lang):
        """Return what the templates see besides the record, in lang

        A module may add values made for templates: plain values and plain
        functions of them."""
        return sandbox.helpers(lang)

    def execute_send_email(self, record_activities):
        """Send the email of the activity to the records

        Return the error of each record activity whose email could not be
        composed."""
        return email_.compose(self, record_activities)


def template_error(name, activity, exception):
    "Return the error of the text of field name of activity that fails"
    if name == 'email_title':
        message = gettext(
            'marketing_automation.msg_activity_invalid_email_title',
            activity=activity.rec_name, exception=exception)
    else:
        message = gettext(
            'marketing_automation.msg_activity_invalid_email_template',
            activity=activity.rec_name, exception=exception)
    return TemplateError(message)


def delay_text(delay, locale):
    "Return delay in words, as 00:01 could be a minute or an hour"
    days = delay.days
    hours, seconds = divmod(delay.seconds, 3600)
    minutes = seconds // 60
    parts = []
    for value, unit, delta in [
            (days, 'day', dt.timedelta(days=days)),
            (hours, 'hour', dt.timedelta(hours=hours)),
            (minutes, 'minute', dt.timedelta(minutes=minutes))]:
        if value:
            parts.append(format_timedelta(
                    delta, granularity=unit, threshold=1,
                    format='long', locale=locale))
    return ', '.join(parts)
