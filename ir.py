# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.model import Index, fields
from trytond.pool import Pool, PoolMeta
from trytond.pyson import Bool, Eval

from . import delivery, email_


class Cron(metaclass=PoolMeta):
    __name__ = 'ir.cron'

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls.method.selection.extend([
                ('marketing.automation.scenario|trigger',
                    "Trigger Marketing Scenarios"),
                ('marketing.automation.record.activity|process',
                    "Process Marketing Activity"),
                ])


class ActionKeyword(metaclass=PoolMeta):
    __name__ = 'ir.action.keyword'

    @classmethod
    def get_keyword(cls, keyword, value):
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        keywords = super().get_keyword(keyword, value)
        model, _ = value
        if keyword == 'form_relate' and model in _RELATED_EMAILS:
            # The archives by resource are always empty for these models,
            # which have their own relate action to their emails
            archives = ModelData.get_id('ir', 'act_email_form_relate')
            keywords = [k for k in keywords if k['id'] != archives]
        return keywords


_RELATED_EMAILS = {
    'marketing.automation.scenario',
    'marketing.automation.activity',
    'marketing.automation.record',
    }


class Email(metaclass=PoolMeta):
    "The archive of sent emails is also the outbox of the scenarios"
    __name__ = 'ir.email'

    marketing_automation_activity = fields.Many2One(
        'marketing.automation.activity', "Marketing Activity",
        readonly=True)
    marketing_automation_record = fields.Many2One(
        'marketing.automation.record', "Marketing Record", readonly=True)
    marketing_automation_token = fields.Char(
        "Marketing Token", readonly=True, strip=False)
    marketing_automation_links = fields.Text(
        "Marketing Links", readonly=True)
    marketing_automation_message = fields.Text(
        "Marketing Message", readonly=True)
    marketing_automation_status = fields.Selection([
            (None, ""),
            ('pending', "Pending"),
            ('sending', "Sending"),
            ('sent', "Sent"),
            ('failed', "Failed"),
            ], "Marketing Status", readonly=True,
        states={
            'invisible': ~Eval('marketing_automation_status'),
            })
    marketing_automation_attempts = fields.Integer(
        "Marketing Attempts", readonly=True)
    marketing_automation_error = fields.Text(
        "Marketing Error", readonly=True)
    marketing_automation_next_try = fields.DateTime(
        "Marketing Next Try", readonly=True)
    marketing_automation_sent_at = fields.DateTime(
        "Marketing Sent At", readonly=True)
    marketing_automation_claim = fields.Char(
        "Marketing Claim", readonly=True, strip=False)
    marketing_automation_text = fields.Function(fields.Text(
            "Plain Text",
            states={
                'invisible': ~Eval('marketing_automation_activity'),
                }),
        'get_marketing_automation_text')

    @classmethod
    def __setup__(cls):
        super().__setup__()
        # The HTML of a marketing email reads as one line in a text widget:
        # its plain text is shown instead
        cls.body.states = dict(cls.body.states)
        cls.body.states['invisible'] = Bool(
            Eval('marketing_automation_activity'))
        t = cls.__table__()
        cls._sql_indexes.update({
                Index(t, (t.marketing_automation_token, Index.Equality()),
                    where=t.marketing_automation_token != None),  # noqa: E711
                Index(t,
                    (t.marketing_automation_status,
                        Index.Equality(cardinality='low')),
                    (t.marketing_automation_next_try, Index.Range()),
                    where=t.marketing_automation_status.in_(
                        ['pending', 'sending'])),
                Index(t,
                    (t.marketing_automation_record, Index.Range()),
                    (t.marketing_automation_activity, Index.Range())),
                Index(t, (t.marketing_automation_claim, Index.Equality()),
                    where=t.marketing_automation_claim != None),  # noqa: E711
                })

    @classmethod
    def view_attributes(cls):
        return super().view_attributes() + [
            ('/form/separator[@name="body"]', 'states', {
                    'invisible': Bool(Eval('marketing_automation_activity')),
                    }),
            ]

    def get_marketing_automation_text(self, name):
        if self.marketing_automation_activity and self.body:
            return email_.html_to_text(self.body)

    @classmethod
    def marketing_automation_compose(cls, activity, record_activities):
        return email_.compose(activity, record_activities)

    @classmethod
    def marketing_automation_deliver(cls, emails=None):
        "Send the outbox; emails only tells a worker that there is work"
        return delivery.deliver()

    @classmethod
    def marketing_automation_queue_delivery(cls):
        "Ask a worker to send the outbox if something waits in it"
        emails = cls.search([
                ('marketing_automation_status', 'in', ['pending', 'sending']),
                ], limit=1)
        if emails:
            cls.__queue__.marketing_automation_deliver(emails)

    @classmethod
    def marketing_automation_delivery(cls, record_activities, names):
        return delivery.get_delivery(record_activities, names)
