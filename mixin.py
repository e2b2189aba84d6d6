# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The models that a scenario can pick records from, and the company that
each record belongs to

What a scenario sends never depends on one user's preferences: a record is
read, and its templates and conditions checked, in the context of its own
company, the value of its field company when its model has one."""
from collections import defaultdict

from trytond.model import fields
from trytond.pool import Pool
from trytond.transaction import Transaction, without_check_access

from .batch import sliced


def has_company(Model):
    "Tell whether the records of Model belong to a company"
    field = Model._fields.get('company')
    return (field is not None and field._type == 'many2one'
        and field.model_name == 'company.company')


def company_context(company_id):
    """Return the context of the company: its records read in it and the
    company rules holding for it alone

    A tuple, as the access caches need a hashable key."""
    if company_id is None:
        return {}
    return {'company': company_id, '_companies': (company_id,)}


def companies(Model, ids):
    """Return the company of each of ids of Model, by id, with one query by
    slice; empty when Model has no company"""
    if not has_company(Model):
        return {}
    result = {}
    # Whoever asks, this only sorts the records by company
    with without_check_access(), \
            Transaction().set_context(active_test=False):
        for sub_ids in sliced(sorted(set(ids))):
            for values in Model.search_read(
                    [('id', 'in', list(sub_ids))],
                    fields_names=['company']):
                result[values['id']] = values['company']
    return result


def by_company(Model, ids):
    """Return ids of Model grouped by their company: None for a model
    without company and for a record without one"""
    of = companies(Model, ids)
    grouped = defaultdict(list)
    for id_ in ids:
        grouped[of.get(id_)].append(id_)
    return grouped


def company_of(record):
    "Return the id of the company of record, None for a model without"
    if record is None or not has_company(record.__class__):
        return None
    return record.company.id if record.company else None


def in_company(record):
    "Return record read in the context of its company"
    company_id = company_of(record)
    if (company_id is None or record.id is None
            or record._context.get('company') == company_id):
        return record
    with Transaction().set_context(company_context(company_id)):
        return record.__class__(record.id)


class MarketingAutomationMixin:
    """Offer a model to the scenarios

    marketing_party is the party an email goes to, by default the field
    party of the model, and
    marketing_access_context is the context in which the templates and
    conditions read the record: the marketing group's rights, never root's,
    in the company of the record: its field company, or for a model without
    company, the company of the run.
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
        # Tuples, as the access caches need a hashable key
        context = {
            '_groups': (
                ModelData.get_id('marketing', 'group_marketing'),),
            }
        if has_company(self.__class__):
            company_id = company_of(self)
            context.update(company_context(company_id))
            if company_id is None:
                # A record of no company is seen by the rules as such
                context['_companies'] = ()
        else:
            context.update(company_context(
                    Transaction().context.get('company')))
        return context
