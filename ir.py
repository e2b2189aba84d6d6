# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.pool import Pool, PoolMeta


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
