# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.model import ModelSQL, fields
from trytond.pool import Pool, PoolMeta

from .mixin import MarketingAutomationMixin


class Party(MarketingAutomationMixin, metaclass=PoolMeta):
    __name__ = 'party.party'

    marketing_scenario_unsubscribed = fields.Many2Many(
        'party.party-unsubscribed-marketing.automation.scenario',
        'party', 'scenario',
        "Unsubscribed Marketing Scenarios",
        help="The scenarios that never enrol this party again.")
    marketing_records = fields.Function(
        fields.Many2Many(
            'marketing.automation.record', None, None, "Marketing Scenarios",
            help="The scenarios the party was enrolled in: when, and how "
            "and when it left each one."),
        'get_marketing_records')
    marketing_tracking_refused = fields.Boolean(
        "Refuse Marketing Tracking",
        help="If checked, the marketing emails to the party track neither "
        "opens nor clicks, whatever their scenario.")

    @classmethod
    def get_marketing_records(cls, parties, name):
        pool = Pool()
        Record = pool.get('marketing.automation.record')
        result = {p.id: [] for p in parties}
        records = Record.search([
                ('party', 'in', [p.id for p in parties]),
                ], order=[('create_date', 'DESC'), ('id', 'DESC')])
        for record in records:
            if record.party and record.party.id in result:
                result[record.party.id].append(record.id)
        return result

    def get_marketing_party(self, name):
        return self.id

    @classmethod
    def search_marketing_party(cls, name, clause):
        nested = clause[0][len(name) + 1:]
        return [(nested or 'id',) + tuple(clause[1:])]

    @classmethod
    def copy(cls, parties, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('marketing_scenario_unsubscribed')
        return super().copy(parties, default=default)


class PartyUnsubscribedScenario(ModelSQL):
    "The people who asked to leave a scenario: never lose one"
    __name__ = 'party.party-unsubscribed-marketing.automation.scenario'

    party = fields.Many2One(
        'party.party', "Party", required=True, ondelete='CASCADE')
    scenario = fields.Many2One(
        'marketing.automation.scenario', "Scenario",
        required=True, ondelete='CASCADE')
