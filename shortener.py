# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The shortened links of the emails sent by Tryton's own module

Their tracked links and open image are web_shortener URLs whose callback is
an event of the record activity: they keep working after the swap."""
from trytond.pool import PoolMeta

CALLBACKS = [
    'marketing.automation.record.activity|on_email_opened',
    'marketing.automation.record.activity|on_email_clicked',
    ]


class ShortenedURL(metaclass=PoolMeta):
    __name__ = 'web.shortened_url'

    @classmethod
    def _get_models(cls):
        return super()._get_models() + [
            'marketing.automation.record.activity']

    @classmethod
    def _get_methods(cls):
        return super()._get_methods() + CALLBACKS
