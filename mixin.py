# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"The models that a scenario can pick records from"
from trytond.model import fields
from trytond.pool import Pool


class MarketingAutomationMixin:
    """Offer a model to the scenarios

    marketing_party is the party an email goes to, by default the field
    party of the model, and
    marketing_access_context is the context in which the templates and
    conditions read the record: the marketing group's rights, never root's.
    """
    __slots__ = ()

    marketing_party = fields.Function(
        fields.Many2One('party.party', "Marketing Party"),
        'get_marketing_party', searcher='search_marketing_party')

    def get_marketing_party(self, name):
        "Return the party of the record: its field party by default"
        party = getattr(self, 'party', None)
        return party.id if party else None

    @classmethod
    def search_marketing_party(cls, name, clause):
        nested = clause[0][len(name):]
        return [('party' + nested,) + tuple(clause[1:])]

    @property
    def marketing_access_context(self):
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        # A tuple, as the access caches need a hashable key
        return {
            '_groups': (
                ModelData.get_id('marketing', 'group_marketing'),),
            }
