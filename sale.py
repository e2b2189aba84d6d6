# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.pool import Pool, PoolMeta

from .mixin import MarketingAutomationMixin


class Sale(MarketingAutomationMixin, metaclass=PoolMeta):
    __name__ = 'sale.sale'

    def get_marketing_party(self, name):
        return self.party.id if self.party else None

    @classmethod
    def search_marketing_party(cls, name, clause):
        nested = clause[0][len(name):]
        return [('party' + nested,) + tuple(clause[1:])]

    @property
    def marketing_access_context(self):
        pool = Pool()
        ModelData = pool.get('ir.model.data')
        context = super().marketing_access_context
        # A template reads its sale as the sales group does
        context['_groups'] += (ModelData.get_id('sale', 'group_sale'),)
        return context
