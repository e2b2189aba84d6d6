# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"The settings of the module that hold across all scenarios"
import datetime as dt

from trytond.model import ModelSingleton, ModelSQL, ModelView, fields
from trytond.pyson import Bool, Eval


class Configuration(ModelSingleton, ModelSQL, ModelView):
    "Marketing Automation Configuration"
    __name__ = 'marketing.automation.configuration'

    frequency_cap = fields.Integer(
        "Frequency Cap",
        domain=['OR',
            ('frequency_cap', '=', None),
            ('frequency_cap', '>', 0),
            ],
        help="At most this many marketing emails to a party in the period, "
        "across all scenarios.\n"
        "Leave empty for no cap.")
    frequency_period = fields.TimeDelta(
        "Frequency Period",
        domain=['OR',
            ('frequency_period', '=', None),
            ('frequency_period', '>', dt.timedelta(0)),
            ],
        states={
            'required': Bool(Eval('frequency_cap')),
            },
        help="The rolling period of the frequency cap.")

    @classmethod
    def default_frequency_period(cls):
        return dt.timedelta(days=7)
