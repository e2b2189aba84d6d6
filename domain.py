# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Say what is wrong in the domain of a scenario, in the marketer's words

trytond reads what is not a clause as a list of clauses, so a misspelt
operator would recurse until Python stops it: the shape is checked first."""
import json

from trytond.const import OPERATORS
from trytond.i18n import gettext
from trytond.model import fields
from trytond.pool import Pool
from trytond.pyson import PYSONDecoder

from . import sandbox

# No marketer nests deeper: trytond would reach Python's recursion limit
DOMAIN_DEPTH = 20
RELATIONS = {'many2one', 'one2one', 'one2many', 'many2many'}


class DomainInvalid(ValueError):
    "What is wrong in a domain, in the marketer's words"


def _show(value):
    "Return value as the marketer wrote it"
    return json.dumps(value, default=str)


def check_domain(model, text):
    """Raise an exception that says why text is not a domain of model

    The shape of the domain and its fields are checked first, to say what
    is wrong in the marketer's words; building the query checks the rest."""
    try:
        domain = PYSONDecoder({}).decode(text)
    except RecursionError:
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_too_deep',
                depth=DOMAIN_DEPTH))
    except Exception as exception:
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_not_json',
                exception=exception))
    if not isinstance(domain, list):
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_not_list',
                value=_show(domain)))
    check_clauses(model, domain)
    Model = Pool().get(model)
    try:
        Model.search(domain, order=[], query=True)
    except Exception:
        # Say which clause fails
        for clause in _clauses(domain):
            try:
                Model.search([clause], order=[], query=True)
            except RecursionError:
                raise DomainInvalid(gettext(
                        'marketing_automation.msg_domain_endless',
                        clause=_show(clause)))
            except Exception as exception:
                raise DomainInvalid(gettext(
                        'marketing_automation.msg_domain_clause_failed',
                        clause=_show(clause), exception=exception))
        raise


def _is_clause(value):
    return (isinstance(value, (list, tuple)) and value
        and isinstance(value[0], str) and value[0] not in {'AND', 'OR'})


def _clauses(domain):
    "Yield the clauses of domain, as check_clauses accepts it"
    for item in domain:
        if _is_clause(item):
            yield item
        elif isinstance(item, list):
            yield from _clauses(item)


def check_clauses(model, domain, depth=1):
    """Raise DomainInvalid for what is not a list of clauses on the fields
    of model in domain

    trytond reads what is not a clause as a list of clauses: a misspelt
    operator or "AND" would recurse until Python stops it."""
    if depth > DOMAIN_DEPTH:
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_too_deep',
                depth=DOMAIN_DEPTH))
    for index, item in enumerate(domain):
        if isinstance(item, str) and item in {'AND', 'OR'}:
            if index:
                raise DomainInvalid(gettext(
                        'marketing_automation.msg_domain_and_or_first',
                        value=item))
        elif _is_clause(item):
            check_clause(model, item)
        elif isinstance(item, list):
            check_clauses(model, item, depth + 1)
        else:
            raise DomainInvalid(gettext(
                    'marketing_automation.msg_domain_not_clause',
                    value=_show(item)))


def _is_model(name):
    try:
        Pool().get(name)
    except (KeyError, TypeError):
        return False
    return True


def check_clause(model, clause):
    "Raise DomainInvalid when clause is not a clause on the fields of model"
    pool = Pool()
    if len(clause) not in {3, 4}:
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_not_clause',
                value=_show(clause)))
    path, operator = clause[:2]
    if operator not in OPERATORS:
        raise DomainInvalid(gettext(
                'marketing_automation.msg_domain_unknown_operator',
                operator=operator, clause=_show(clause),
                operators=', '.join(OPERATORS)))
    names = path.split('.')
    for index, name in enumerate(names):
        Model = pool.get(model)
        if name not in Model._fields:
            raise DomainInvalid(sandbox.no_field(model, name))
        field = Model._fields[name]
        if index == len(names) - 1:
            break
        if field._type in RELATIONS:
            model = field.get_target().__name__
        elif (field._type == 'reference' and len(clause) == 4
                and _is_model(clause[3])):
            model = clause[3]
        elif field._type in {'reference', 'dict'} or isinstance(
                field, fields.Function):
            # Read by the field or its searcher
            break
        else:
            raise DomainInvalid(gettext(
                    'marketing_automation.msg_domain_not_relation',
                    field=name, model=Model.__names__()['model'],
                    path=path))
