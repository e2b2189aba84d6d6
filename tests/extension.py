# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""A module that extends the scenarios through each extension point, for
the tests only: a model offered to scenarios, a new action whose children
wait for its event, and extra values in the template context"""
from trytond.model import ModelSQL, ModelView, fields
from trytond.modules.marketing_automation.mixin import MarketingAutomationMixin
from trytond.pool import Pool, PoolMeta

# The selection values that the test module adds to the module's models
SELECTIONS = {
    'action': [('send_text', "Send Text Message")],
    'event': [('text_replied', "Text Replied")],
    'on': [
        ('text_replied', "Text Replied"),
        ('text_replied_not', "Text Not Replied"),
        ],
    }


class Voucher(MarketingAutomationMixin, ModelSQL, ModelView):
    "Marketing Automation Test Voucher"
    __name__ = 'marketing.automation.test.voucher'
    code = fields.Char("Code")
    party = fields.Many2One('party.party', "Party")
    phone = fields.Char("Phone")

    def get_rec_name(self, name):
        return self.code


class TextMessage(ModelSQL):
    "Marketing Automation Test Text Message"
    __name__ = 'marketing.automation.test.text_message'
    phone = fields.Char("Phone")
    text = fields.Char("Text")
    record_activity = fields.Many2One(
        'marketing.automation.record.activity', "Record Activity")


class Activity(metaclass=PoolMeta):
    __name__ = 'marketing.automation.activity'

    @classmethod
    def __setup__(cls):
        super().__setup__()
        for name, selection in SELECTIONS.items():
            getattr(cls, name).selection.extend(selection)

    @classmethod
    def action_events(cls):
        events = super().action_events()
        events['send_text'] = {'text_replied'}
        return events

    def execute_send_text(self, record_activities):
        "Send a text message to the phone of each voucher"
        pool = Pool()
        TextMessage = pool.get('marketing.automation.test.text_message')
        messages, errors = [], {}
        for record_activity in record_activities:
            voucher = record_activity.record.record
            if not voucher.phone:
                errors[record_activity] = "No phone for %s" % voucher.code
                continue
            messages.append({
                    'phone': voucher.phone,
                    'text': "Your code: %s" % voucher.code,
                    'record_activity': record_activity.id,
                    })
        TextMessage.create(messages)
        return errors

    def email_context(self, lang):
        context = super().email_context(lang)
        context['shout'] = shout
        return context


def shout(text):
    "Return text in capitals, a plain function for the templates"
    return str(text).upper()
