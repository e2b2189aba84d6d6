# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.model import Index, fields
from trytond.pool import PoolMeta
from trytond.pyson import Eval

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


class Email(metaclass=PoolMeta):
    "The archive of sent e-mails is also the outbox of the scenarios"
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

    @classmethod
    def __setup__(cls):
        super().__setup__()
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
