# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The sandbox of what a marketer writes: email titles, email templates
and conditions

A marketer is not an administrator. What they write sees only values made
for templates: a read-only proxy of the record, which reads with the
marketing group's rights, plain helper functions and the date and time
types. Nothing whose name starts with "_" is reachable, by any route."""
import ast
import datetime as dt
import json
import re
import string
from collections import defaultdict, namedtuple
from contextlib import contextmanager
from decimal import Decimal
from functools import lru_cache

from genshi.core import START
from genshi.template import MarkupTemplate, NewTextTemplate
from genshi.template.base import EXEC, EXPR, INCLUDE, SUB
from genshi.template.directives import (
    DefDirective, ForDirective, MatchDirective, WithDirective)
from genshi.template.eval import UNDEFINED, Code, LookupBase, UndefinedError
from genshi.template.markup import MarkupTemplate as _MarkupTemplate

from trytond.i18n import gettext
from trytond.model import EvalEnvironment, Model
from trytond.pool import Pool
from trytond.pyson import CONTEXT as PYSON_CLASSES
from trytond.pyson import PYSONDecoder
from trytond.report import Report
from trytond.transaction import Transaction, check_access

from .mixin import in_company

# What a link target must never carry: it would split an HTTP header
CONTROL = re.compile(r'[\x00-\x1f\x7f]')
XINCLUDE = _MarkupTemplate.XINCLUDE_NAMESPACE

BUILTINS = {
    'True': True, 'False': False, 'None': None,
    'abs': abs, 'all': all, 'any': any, 'bool': bool, 'chr': chr,
    'dict': dict, 'divmod': divmod, 'enumerate': enumerate,
    'filter': filter, 'float': float, 'format': format,
    'frozenset': frozenset, 'int': int, 'iter': iter, 'len': len,
    'list': list,
    'map': map, 'max': max, 'min': min, 'next': next, 'ord': ord,
    'range': range, 'repr': repr, 'reversed': reversed, 'round': round,
    'set': set, 'sorted': sorted, 'str': str, 'sum': sum, 'tuple': tuple,
    'zip': zip,
    }
# Names refused when the template is saved, for a clearer message than
# "not defined" when it is rendered
REFUSED_NAMES = {
    '__import__', 'breakpoint', 'classmethod', 'compile', 'delattr', 'dir',
    'eval', 'exec', 'getattr', 'globals', 'hasattr', 'help', 'id', 'input',
    'locals', 'memoryview', 'object', 'open', 'property', 'setattr',
    'staticmethod', 'super', 'type', 'vars',
    }
# The values whose public attributes a template may read
VALUE_TYPES = (
    str, bytes, bool, int, float, complex, Decimal,
    dt.date, dt.time, dt.timedelta, dt.tzinfo,
    list, tuple, dict, set, frozenset, range)
# The classes whose public attributes a template may read
VALUE_CLASSES = frozenset({
        dt.date, dt.datetime, dt.time, dt.timedelta, dt.timezone})


@contextmanager
def access(context):
    """Check access in context, as a user: root skips every check

    The crons run as root, so the checks then run as the administrator with
    the groups and the companies of context, never with the administrator's
    own."""
    pool = Pool()
    ModelData = pool.get('ir.model.data')
    transaction = Transaction()
    user = transaction.user or ModelData.get_id('res', 'user_admin')
    # The access caches are keyed on them
    context = {
        k: tuple(v) if k in {'_groups', '_companies'} and v is not None else v
        for k, v in context.items()}
    with transaction.set_user(user), transaction.set_context(context), \
            check_access():
        yield


class SandboxError(Exception):
    "What a marketer wrote tried to leave the sandbox"


def _refused(kind, **values):
    return SandboxError(gettext(
            'marketing_automation.msg_sandbox_' + kind, **values))


def _private(name):
    return _refused('private', name=name)


class RecordProxy:
    """A read-only view of a record for templates

    It gives only the values of fields, read with the rights of its access
    context, and proxies of the records they point to. The proxies made
    together share the fields already checked: the rights do not change
    while a batch of emails renders."""
    __slots__ = ('_record', '_context', '_checked')

    def __init__(self, record, context, checked):
        object.__setattr__(self, '_record', record)
        object.__setattr__(self, '_context', context)
        object.__setattr__(self, '_checked', checked)

    @classmethod
    def of(cls, records, context, checked=None):
        """Return the proxies of records, checked in context, which share
        checked: the (model, field) already checked in context"""
        pool = Pool()
        ModelAccess = pool.get('ir.model.access')
        Rule = pool.get('ir.rule')
        records = [r for r in records if r is not None and r.id is not None]
        if records:
            name = records[0].__name__
            with access(context):
                ModelAccess.check(name, 'read')
                Rule.check(name, [r.id for r in records], 'read')
        if checked is None:
            checked = set()
        return [cls(r, context, checked) for r in records]

    def _field(self, name):
        pool = Pool()
        FieldAccess = pool.get('ir.model.field.access')
        record = self._record
        if name not in record._fields:
            raise UndefinedError(name)
        key = (record.__name__, name)
        if key not in self._checked:
            with access(self._context):
                FieldAccess.check(record.__name__, [name], 'read')
            self._checked.add(key)
        return _template_value(
            getattr(record, name), self._context, self._checked)

    def __setattr__(self, name, value):
        raise _refused('write')

    def __delattr__(self, name):
        raise _refused('write')

    def __str__(self):
        return '%s,%s' % (self._record.__name__, self._record.id)

    __repr__ = __str__

    def __int__(self):
        return int(self._record.id)

    def __bool__(self):
        return True

    def __eq__(self, other):
        if isinstance(other, RecordProxy):
            return self._record == other._record
        return NotImplemented

    def __hash__(self):
        return hash(self._record)


def _template_value(value, context, checked=None):
    "Return value as a template may see it"
    if isinstance(value, Model):
        return next(iter(RecordProxy.of([value], context, checked)), None)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, Model) for v in value):
            return tuple(RecordProxy.of(value, context, checked))
        return tuple(_template_value(v, context, checked) for v in value)
    if isinstance(value, dict):
        return {k: _template_value(v, context, checked)
            for k, v in value.items()}
    if value is None or isinstance(value, VALUE_TYPES):
        return value
    raise _refused('value', type=type(value).__name__)


def unproxied(value):
    "Return the record behind a proxy, for the helpers"
    if isinstance(value, RecordProxy):
        return value._record
    return value


class Namespace:
    "A read-only set of named values, such as the date and time types"
    __slots__ = ('_values',)

    def __init__(self, **values):
        object.__setattr__(self, '_values', dict(values))

    def __setattr__(self, name, value):
        raise _refused('write')

    def __repr__(self):
        return '<%s>' % ', '.join(sorted(self._values))


DATETIME = Namespace(
    date=dt.date, datetime=dt.datetime, time=dt.time,
    timedelta=dt.timedelta, timezone=dt.timezone)


def split_field_name(field_name):
    """Return the argument of the replacement field field_name and its
    (is_attribute, key) lookups, as str.format reads them (PEP 3101)

    Our own: string.Formatter.get_field looks them up without the sandbox,
    and the splitter it uses is in the private CPython module _string."""
    first = _FIELD_ARGUMENT.match(field_name).group()
    rest, index = [], len(first)
    while index < len(field_name):
        if field_name[index] == '.':
            end = _FIELD_ARGUMENT.match(field_name, index + 1).end()
            key = field_name[index + 1:end]
            if not key:
                raise ValueError("Empty attribute in format string")
            rest.append((True, key))
        else:
            end = field_name.find(']', index + 1)
            if end < 0:
                raise ValueError("Missing ']' in format string")
            key = field_name[index + 1:end]
            if not key:
                raise ValueError("Empty attribute in format string")
            rest.append((False, _field_index(key)))
            end += 1
            if end < len(field_name) and field_name[end] not in '.[':
                raise ValueError("Only '.' or '[' may follow ']' in format "
                    "field specifier")
        index = end
    return _field_index(first), rest


# The name of an argument or an attribute ends at a lookup
_FIELD_ARGUMENT = re.compile(r'[^.\[]*')


def _field_index(key):
    return int(key) if re.fullmatch(r'[0-9]+', key) else key


class _Formatter(string.Formatter):
    "str.format that walks fields through the sandbox"

    def get_field(self, field_name, args, kwargs):
        first, rest = split_field_name(field_name)
        if isinstance(first, str) and first.startswith('_'):
            raise _private(first)
        value = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            if is_attribute:
                value = SandboxLookup.lookup_attr(value, key)
            else:
                value = SandboxLookup.lookup_item(value, (key,))
        return value, first


_formatter = _Formatter()


def _format(text):
    def format(*args, **kwargs):
        return _formatter.vformat(text, args, kwargs)
    return format


def _format_map(text):
    def format_map(mapping):
        return _formatter.vformat(text, (), mapping)
    return format_map


class SandboxLookup(LookupBase):
    """How names, attributes and items are looked up in the expressions of a
    template"""

    @classmethod
    def globals(cls, data):
        values = super().globals(data)
        # Without it, a name the transformer leaves alone reaches Python's
        # own builtins
        values['__builtins__'] = BUILTINS
        return values

    @classmethod
    def lookup_name(cls, data, name):
        if name.startswith('_'):
            raise _private(name)
        value = data.get(name, BUILTINS.get(name, UndefinedError))
        if value is UndefinedError:
            return cls.undefined(name)
        return value

    @classmethod
    def lookup_attr(cls, obj, key):
        if not isinstance(key, str) or key.startswith('_'):
            raise _private(str(key))
        if isinstance(obj, RecordProxy):
            return obj._field(key)
        if isinstance(obj, Namespace):
            if key not in obj._values:
                return cls.undefined(key, owner=obj)
            return obj._values[key]
        if isinstance(obj, str) and key == 'format':
            return _format(obj)
        if isinstance(obj, str) and key == 'format_map':
            return _format_map(obj)
        if not (isinstance(obj, VALUE_TYPES) or obj in VALUE_CLASSES):
            raise _refused('value', type=type(obj).__name__)
        try:
            return getattr(obj, key)
        except AttributeError:
            if isinstance(obj, dict) and key in obj:
                return obj[key]
            return cls.undefined(key, owner=obj)

    @classmethod
    def lookup_item(cls, obj, key):
        if len(key) == 1:
            key, = key
        if isinstance(key, str) and key.startswith('_'):
            raise _private(key)
        if isinstance(obj, (RecordProxy, Namespace)):
            return cls.lookup_attr(obj, key)
        if not isinstance(obj, VALUE_TYPES):
            raise _refused('value', type=type(obj).__name__)
        try:
            return obj[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(key, str):
                return cls.lookup_attr(obj, key)
            raise

    @classmethod
    def undefined(cls, key, owner=UNDEFINED):
        raise UndefinedError(key, owner=owner)


class _NoLoader:
    "A template loader that reads nothing: includes are refused"
    # Genshi loads includes when the template is rendered with this set
    auto_reload = True

    def load(self, *args, **kwargs):
        raise _refused('include')


def _check_expression(code):
    "Refuse the Python of code that could leave the sandbox"
    # The tree as written: the source of the values of py:with is not kept
    for node in ast.walk(code.ast):
        if isinstance(node, ast.Name):
            if node.id.startswith('_'):
                raise _private(node.id)
            if node.id in REFUSED_NAMES:
                raise _refused('name', name=node.id)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith('_'):
                raise _private(node.attr)
            if not isinstance(node.ctx, ast.Load):
                raise _refused('write')
        elif isinstance(node, ast.Subscript):
            if not isinstance(node.ctx, ast.Load):
                raise _refused('write')
            if (isinstance(node.slice, ast.Constant)
                    and isinstance(node.slice.value, str)
                    and node.slice.value.startswith('_')):
                raise _private(node.slice.value)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            raise _refused('import')
        elif isinstance(node, (
                    ast.Global, ast.Nonlocal, ast.Yield, ast.YieldFrom,
                    ast.Await, ast.FunctionDef, ast.AsyncFunctionDef,
                    ast.ClassDef)):
            raise _refused('statement', statement=type(node).__name__)


def _codes(value, depth=0):
    "Yield the Code objects held by a directive"
    if isinstance(value, Code):
        yield value
    elif depth < 4:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            for item in value:
                yield from _codes(item, depth + 1)
        elif hasattr(value, '__slots__') or hasattr(value, '__dict__'):
            names = set(getattr(value, '__dict__', {}))
            for cls in type(value).__mro__:
                names.update(getattr(cls, '__slots__', ()))
            for name in names:
                yield from _codes(
                    getattr(value, name, None), depth + 1)


def _check_stream(stream):
    """Check every expression of a parsed template stream, refuse includes
    and code blocks, and the link targets that carry control characters"""
    for kind, data, pos in stream:
        if kind is EXPR:
            _check_expression(data)
        elif kind is EXEC:
            raise _refused('python')
        elif kind is INCLUDE:
            raise _refused('include')
        elif kind is SUB:
            directives, substream = data
            for directive in directives:
                for code in _codes(directive):
                    _check_expression(code)
                for assign in _assignments(directive):
                    _assigned(assign)
            _check_stream(substream)
        elif kind is START:
            tag, attrs = data
            if tag in {'{%s}include' % XINCLUDE, '{%s}fallback' % XINCLUDE}:
                raise _refused('include')
            for name, value in attrs:
                if isinstance(value, list):
                    _check_stream(value)
                elif (name.localname == 'href'
                        and CONTROL.search(value or '')):
                    raise _refused('link')


def _parse(Template, text):
    template = Template(
        text, loader=_NoLoader(), lookup=SandboxLookup, allow_exec=False)
    _check_stream(template.stream)
    return template


@lru_cache(maxsize=256)
def email_template(text):
    "Return the checked Genshi HTML template of text"
    return _parse(MarkupTemplate, text)


@lru_cache(maxsize=256)
def email_title(text):
    "Return the checked Genshi text template of text"
    return _parse(NewTextTemplate, text)


# The names that Genshi gives every template besides its data
GENSHI_NAMES = frozenset({'defined', 'value_of'})


def known_names(helpers):
    """Return the names that a template may read, with helpers: the record,
    the helpers and the builtins of the sandbox, and Genshi's own"""
    return {'record'} | set(helpers) | set(BUILTINS) | GENSHI_NAMES


# What an expression gives, as far as it can be known before rendering:
# the record (many False) or the records (many True) of model
Records = namedtuple('Records', ['model', 'many'])


def _assignments(directive):
    "Return the functions with which directive assigns its names"
    if isinstance(directive, ForDirective):
        return [directive.assign]
    if isinstance(directive, WithDirective):
        return [a for targets, _ in directive.vars for a in targets]
    return []


def _assigned(assign):
    """Return the names that an assignment function of Genshi assigns, as
    nested tuples, and refuse the targets that are not names"""
    # Genshi keeps them only as the default of the function it builds
    names, = assign.__defaults__

    def check(names):
        if names is None:
            raise _refused('write')
        if isinstance(names, tuple):
            for name in names:
                check(name)
    check(names)
    return names


def _model_name(model):
    IrModel = Pool().get('ir.model')
    return IrModel.get_name(model)


def field_type(model, name):
    """Return what the field name of model gives, or None for a value or an
    unknown model, and raise KeyError when model has no such field"""
    try:
        Model = Pool().get(model)
    except KeyError:
        return None
    field = Model._fields[name]
    if field._type in {'many2one', 'one2one'}:
        return Records(field.get_target().__name__, False)
    if field._type in {'one2many', 'many2many'}:
        return Records(field.get_target().__name__, True)
    return None


def no_field(model, name):
    "Return the message that model has no field name, in the user's words"
    return gettext('marketing_automation.msg_no_field',
        model=_model_name(model), field=name)


class _UnknownField(Exception):
    def __init__(self, model, name):
        super().__init__(model, name)
        self.model, self.name = model, name


class _UnknownName(Exception):
    def __init__(self, name):
        super().__init__(name)
        self.name = name


def _type_of(node, scope):
    """Return the Records that node gives, or None when it cannot be known,
    and raise _UnknownField for a field that the model does not have"""
    if isinstance(node, ast.Name):
        return scope.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _type_of(node.value, scope)
        if owner is not None and not owner.many:
            return _field_of(owner.model, node.attr)
    elif isinstance(node, ast.Subscript):
        owner = _type_of(node.value, scope)
        key = node.slice
        if owner is None or not isinstance(key, ast.Constant):
            return None
        if owner.many and isinstance(key.value, int):
            return Records(owner.model, False)
        if not owner.many and isinstance(key.value, str):
            # A record's item is its field
            return _field_of(owner.model, key.value)
    return None


def _field_of(model, name):
    try:
        return field_type(model, name)
    except KeyError:
        raise _UnknownField(model, name)


def _element(records):
    "Return the type of an item of records"
    if records is not None and records.many:
        return Records(records.model, False)


def _bind(scope, names, value=None):
    "Bind names, as Genshi assigns them, in scope: a name gets value"
    if isinstance(names, tuple):
        for name in names:
            _bind(scope, name)
    else:
        scope[names] = value


def _check_names(tree, scope, closed):
    """Refuse in tree a name that is not in scope when closed, or a field
    that the model of a record does not have; return the type of tree"""
    def walk(node, scope):
        if isinstance(node, (
                    ast.ListComp, ast.SetComp, ast.GeneratorExp,
                    ast.DictComp)):
            inner = dict(scope)
            for generator in node.generators:
                walk(generator.iter, inner)
                target = generator.target
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        inner[name.id] = None
                if isinstance(target, ast.Name):
                    inner[target.id] = _element(
                        _type_of(generator.iter, inner))
                for condition in generator.ifs:
                    walk(condition, inner)
            if isinstance(node, ast.DictComp):
                walk(node.key, inner)
                walk(node.value, inner)
            else:
                walk(node.elt, inner)
            return
        if isinstance(node, ast.Lambda):
            for default in node.args.defaults + node.args.kw_defaults:
                if default is not None:
                    walk(default, scope)
            inner = dict(scope)
            arguments = node.args
            for argument in (arguments.posonlyargs + arguments.args
                    + arguments.kwonlyargs
                    + [arguments.vararg, arguments.kwarg]):
                if argument is not None:
                    inner[argument.arg] = None
            walk(node.body, inner)
            return
        if isinstance(node, ast.NamedExpr):
            walk(node.value, scope)
            scope[node.target.id] = _type_of(node.value, scope)
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if closed and node.id not in scope:
                raise _UnknownName(node.id)
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            _type_of(node, scope)
        for child in ast.iter_child_nodes(node):
            walk(child, scope)
    scope = dict(scope)
    walk(tree, scope)
    if isinstance(tree, ast.Expression):
        return _type_of(tree.body, scope)


def _def_names(stream):
    "Yield the names of the functions that py:def defines in stream"
    for kind, data, pos in stream:
        if kind is SUB:
            directives, substream = data
            for directive in directives:
                if isinstance(directive, DefDirective):
                    yield directive.name
            yield from _def_names(substream)


def _check_scope(stream, scope, closed):
    "Check the names and the fields that the expressions of stream read"
    for kind, data, pos in stream:
        if kind is EXPR:
            _check_names(data.ast, scope, closed)
        elif kind is SUB:
            directives, substream = data
            inner, inner_closed = dict(scope), closed
            for directive in directives:
                inner_closed = _directive_scope(
                    directive, inner, inner_closed)
            _check_scope(substream, inner, inner_closed)
        elif kind is START:
            for name, value in data[1]:
                if isinstance(value, list):
                    _check_scope(value, scope, closed)


def _directive_scope(directive, scope, closed):
    """Check the expressions of directive and bind in scope the names that
    it gives to its element; return whether the names are still known"""
    if isinstance(directive, ForDirective):
        # Genshi reads "x in items" as "iter(items)"
        items, = directive.expr.ast.body.args
        _check_names(directive.expr.ast, scope, closed)
        names = _assigned(directive.assign)
        _bind(scope, names, _element(_type_of(items, scope)))
    elif isinstance(directive, WithDirective):
        for targets, code in directive.vars:
            value = _check_names(code.ast, scope, closed)
            for assign in targets:
                _bind(scope, _assigned(assign), value)
    elif isinstance(directive, DefDirective):
        for code in directive.defaults.values():
            _check_names(code.ast, scope, closed)
        for name in directive.args + [
                directive.star_args, directive.dstar_args]:
            if name:
                scope[name] = None
    elif isinstance(directive, MatchDirective):
        # Its body renders where the element it matches is, whose names
        # cannot be known here
        scope['select'] = None
        return False
    else:
        for code in _codes(directive):
            _check_names(code.ast, scope, closed)
    return closed


# Where a template holds Python: ${...}, $name, the py: attributes and
# elements and the {% %} directives of the text templates
_EXPRESSIONS = re.compile(
    r'\$\{.*?\}|\$[A-Za-z_][\w.]*'
    r'|py:\w+\s*=\s*(?:"[^"]*"|\'[^\']*\')'
    r'|<py:\w+[^>]*>|\{%.*?%\}', re.DOTALL)


def _line(text, pattern):
    """Return the line of text where an expression first matches pattern

    Genshi's own positions are not exact."""
    for expression in _EXPRESSIONS.finditer(text):
        match = re.search(pattern, expression.group())
        if match:
            return text.count('\n', 0, expression.start() + match.start()) + 1
    return 1


def check_names(text, parse, names, model=None):
    """Refuse text, a template parsed by parse, when an expression reads a
    name other than names and those it defines, or a field that the record
    of model does not have"""
    template = parse(text)
    scope = {name: None for name in names}
    scope.update((name, None) for name in _def_names(template.stream))
    if model:
        scope['record'] = Records(model, False)
    try:
        _check_scope(template.stream, scope, True)
    except _UnknownName as unknown:
        raise SandboxError(gettext(
                'marketing_automation.msg_sandbox_unknown_name',
                name=unknown.name, line=_line(
                    text, r'(?<![\w.])%s\b' % re.escape(unknown.name))))
    except _UnknownField as unknown:
        raise SandboxError(gettext(
                'marketing_automation.msg_sandbox_unknown_field',
                model=_model_name(unknown.model), field=unknown.name,
                line=_line(text, r'(?:\.\s*|[\'"])%s\b' % re.escape(
                        unknown.name))))


def helpers(lang):
    "Return the helpers of the templates in lang, as plain functions"
    def format_date(value, format=None):
        return Report.format_date(value, lang, format=format)

    def format_datetime(value, format=None, timezone=None):
        return Report.format_datetime(
            value, lang, format=format, timezone=timezone)

    def format_timedelta(value, converter=None):
        return Report.format_timedelta(value, converter=converter, lang=lang)

    def format_currency(value, currency, symbol=True, grouping=True,
            digits=None):
        return Report.format_currency(
            value, lang, unproxied(currency), symbol=symbol,
            grouping=grouping, digits=digits)

    def format_number(value, digits=None, grouping=True, monetary=None):
        return Report.format_number(
            value, lang, digits=digits, grouping=grouping,
            monetary=monetary)
    return {
        'format_date': format_date,
        'format_datetime': format_datetime,
        'format_timedelta': format_timedelta,
        'format_currency': format_currency,
        'format_number': format_number,
        'datetime': DATETIME,
        }


def template_context(record, helpers):
    """Return what the templates of record see, with the helpers of its
    language: the record read in its company"""
    return template_contexts([record], helpers)[0]


def template_contexts(records, helpers):
    """Return what the templates of each of records see, with the helpers
    of their language, each record read in its company

    The records of the same access context are checked together: when one
    of them may not be read, they all fail."""
    if any(r is None or r.id is None for r in records):
        raise ValueError("A template needs a stored record")
    records = [in_company(r) for r in records]
    by_access = defaultdict(list)
    access_contexts = {}
    for index, record in enumerate(records):
        access_context = record.marketing_access_context
        # Its values are hashable, for the access caches
        key = (record.__name__, tuple(sorted(access_context.items())))
        access_contexts[key] = access_context
        by_access[key].append(index)
    contexts = [None] * len(records)
    for key, indexes in by_access.items():
        proxies = RecordProxy.of(
            [records[i] for i in indexes], access_contexts[key])
        for index, proxy in zip(indexes, proxies):
            contexts[index] = dict(helpers, record=proxy)
    return contexts


def render_title(text, context):
    "Return the email title rendered on one line"
    return ' '.join(
        email_title(text).generate(**context).render(encoding=None).split())


def render_email(text, context, filter_=None):
    "Return the email HTML rendered, passed through filter_"
    stream = email_template(text).generate(**context)
    if filter_ is not None:
        stream = stream.filter(filter_)
    return stream.render(method='html', encoding=None)


def check_link(href):
    "Refuse a link target that could split an HTTP header"
    if CONTROL.search(href):
        raise _refused('link')
    return href


# Conditions

class ConditionEnvironment(EvalEnvironment):
    "The record as a condition sees it: its fields, read in its context"
    __slots__ = ('_context',)

    def __init__(self, record, Model, context):
        super().__init__(record, Model)
        self._context = context

    def __getitem__(self, item):
        pool = Pool()
        FieldAccess = pool.get('ir.model.field.access')
        name = item[len('_parent_'):] if item.startswith('_parent_') else item
        if name.startswith('_') or name not in self._model._fields:
            raise KeyError(item)
        with access(self._context):
            FieldAccess.check(self._model.__name__, [name], 'read')
        if item != name:
            parent = getattr(self._record, name)
            Parent = pool.get(self._model._fields[name].model_name)
            if parent is not None:
                RecordProxy.of([parent], self._context)
            return ConditionEnvironment(parent, Parent, self._context)
        return super().__getitem__(item)

    def get(self, item, default=None):
        # An access error must fail the condition, not read as the default
        try:
            return self[item]
        except KeyError:
            return default


def check_condition(condition, model=None):
    """Refuse a condition that does not parse, names a private value, reads
    another name than "self", or a field that the record of model does not
    have"""
    PYSONDecoder({'self': {}}).decode(condition)

    def walk(value):
        if isinstance(value, dict):
            names = []
            if ('__class__' in value
                    and value['__class__'] not in PYSON_CLASSES):
                raise _refused('name', name=str(value['__class__']))
            if value.get('__class__') == 'Eval':
                names = str(value.get('v', '')).split('.')
            elif value.get('__class__') == 'Get':
                names = [str(value.get('k', ''))]
            for name in names:
                if name.startswith('_') and not name.startswith('_parent_'):
                    raise _private(name)
            if value.get('__class__') == 'Eval':
                _eval_model(names, model)
            elif value.get('__class__') == 'Get':
                _check_get(value, model)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk(json.loads(condition))


def _eval_model(names, model):
    """Return the model of the record that the Eval of names gives to a
    condition on model, as ConditionEnvironment reads it, or None"""
    if names[0] != 'self':
        raise SandboxError(gettext(
                'marketing_automation.msg_sandbox_condition_name',
                name=names[0]))
    for name in names[1:]:
        if not model:
            return None
        if not name.startswith('_parent_'):
            # A value, or the id of a record: the rest reads as the default
            if name not in Pool().get(model)._fields:
                raise SandboxError(no_field(model, name))
            return None
        parent = name[len('_parent_'):]
        try:
            target = field_type(model, parent)
        except KeyError:
            raise SandboxError(no_field(model, parent))
        if target is None or target.many:
            return None
        model = target.model
    return model


def _check_get(value, model):
    "Refuse the Get of a field that the record of the Eval does not have"
    record, key = value.get('v'), value.get('k')
    if (model and isinstance(record, dict)
            and record.get('__class__') == 'Eval'
            and isinstance(key, str)):
        owner = _eval_model(str(record.get('v', '')).split('.'), model)
        if owner and key not in Pool().get(owner)._fields:
            raise SandboxError(no_field(owner, key))


def condition_holds(condition, record):
    "Tell whether the PYSON condition holds for record, read in its company"
    record = in_company(record)
    context = record.marketing_access_context
    RecordProxy.of([record], context)
    environment = ConditionEnvironment(record, record.__class__, context)
    return bool(PYSONDecoder({'self': environment}).decode(condition))
