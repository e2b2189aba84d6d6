# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"Compose the emails of an activity and track their links and opens"
import email
import hashlib
import json
import logging
import re
from collections import defaultdict, namedtuple
from email import quoprimime
from email.header import Header
from email.policy import default as default_policy
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from functools import lru_cache
from urllib.parse import quote

from genshi.core import END, START, Attrs, QName
from lxml import etree
from lxml import html as lxml_html
from sql import Literal

import trytond.config as config
from trytond.i18n import gettext
from trytond.pool import Pool
from trytond.tools.email_ import format_address, set_from_header
from trytond.transaction import Transaction
from trytond.url import http_host

from . import bounce, sandbox
from .marketing_automation import new_token

logger = logging.getLogger(__name__)

UNSUBSCRIBE = 'unsubscribe'
# Links that a redirect would break are left as they are
UNTRACKED = re.compile(r'^(mailto:|tel:|sms:|#|\$)', re.IGNORECASE)


def automation_base():
    """Return the scheme and host of the tracked URLs

    By default trytond's own, as every URL that trytond makes, but never
    from the Host header of a request, which anyone can set."""
    base = config.get('marketing', 'automation_base', default=None)
    if not base:
        _warn_default_host()
        with Transaction().set_context(_request=None):
            base = http_host()
    return base.rstrip('/')


@lru_cache(maxsize=1)
def _warn_default_host():
    "Warn once per process that the links are on the machine's own name"
    if not config.get('web', 'hostname', default=None):
        logger.warning(
            "neither [marketing] automation_base nor [web] hostname is set: "
            "the links of the emails are on %s", http_host())


def _url(kind, *tokens):
    database = quote(Transaction().database.name, safe='')
    return '/'.join((automation_base(), 'm', database, kind) + tokens)


def open_url(token):
    return _url('o', token + '.gif')


def aggregate_open_url(activity_token):
    "The open image of the emails of an activity, which names nobody"
    return _url('oa', activity_token + '.gif')


def click_url(token, key):
    return _url('c', token, key)


def unsubscribe_url(record_uuid, key=None):
    if key:
        return _url('u', record_uuid, key)
    return _url('u', record_uuid)


def link_key(url):
    "Return the key of url in the links of an email"
    return hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]


def track(email_token, record_uuid, links, clicks=True, image=None):
    """Return a Genshi filter that tracks the links when clicks and adds the
    open image of the URL image

    links is filled with the targets by key."""
    def tracked(href):
        if href == UNSUBSCRIBE:
            return unsubscribe_url(record_uuid)
        if href.startswith(UNSUBSCRIBE + '|'):
            target = href[len(UNSUBSCRIBE) + 1:].strip()
            key = link_key(target)
            links[key] = target
            return unsubscribe_url(record_uuid, key)
        if not clicks or UNTRACKED.match(href):
            return href
        key = link_key(href)
        links[key] = href
        return click_url(email_token, key)
    return _links_filter(tracked, image)


def untracked(unsubscribe):
    """Return a Genshi filter that leaves the links to their targets but
    the unsubscribe links, which go to unsubscribe, and adds no image"""
    def target(href):
        if href == UNSUBSCRIBE or href.startswith(UNSUBSCRIBE + '|'):
            return unsubscribe
        return href
    return _links_filter(target)


def _links_filter(target, image=None):
    """Return a Genshi filter that sends each link to target(href) and adds
    the image at the end of the body"""
    def pixel(pos):
        yield START, (QName('img'), Attrs([
                    (QName('src'), image),
                    (QName('width'), '1'),
                    (QName('height'), '1'),
                    (QName('alt'), ''),
                    (QName('style'), 'border:0;display:block'),
                    ])), pos
        yield END, QName('img'), pos

    def filter_(stream):
        added, pos = image is None, (None, -1, -1)
        for kind, data, pos in stream:
            if kind is START:
                tag, attrs = data
                if tag.localname == 'a' and attrs.get('href'):
                    href = sandbox.check_link(attrs.get('href').strip())
                    attrs |= [(QName('href'), target(href))]
                    data = tag, attrs
            elif kind is END and data.localname == 'body' and not added:
                yield from pixel(pos)
                added = True
            yield kind, data, pos
        if not added:
            yield from pixel(pos)
    return filter_


_BLOCKS = {
    'p', 'div', 'br', 'tr', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6',
    'table', 'ul', 'ol', 'blockquote', 'pre', 'hr'}


def html_to_text(content):
    "Return the plain-text alternative of the HTML content"
    try:
        document = lxml_html.document_fromstring(content)
    except (etree.ParserError, ValueError):
        return ''
    for element in document.xpath('//script|//style|//head|//img'):
        element.drop_tree()
    for link in document.iter('a'):
        href = link.get('href')
        text = link.text_content().strip()
        if href and href != text:
            link.tail = ' <%s>%s' % (href, link.tail or '')
    for element in document.iter(*_BLOCKS):
        element.tail = '\n' + (element.tail or '')
        if element.tag == 'li':
            element.text = '- ' + (element.text or '')
    lines = (' '.join(line.split()) for line in (
            document.text_content().splitlines()))
    text = '\n'.join(lines)
    return re.sub(r'\n{3,}', '\n\n', text).strip() + '\n'


def _configured_sender():
    return (config.get('marketing', 'email_from')
        or config.get('email', 'from'))


def _parties(record_activities):
    """Return the resource and the marketing party of each record activity

    The resources of a model are read together, as are their parties. The
    parties are instances of their own: they are given their contact
    mechanisms, which must not change the records that the templates
    read."""
    pool = Pool()
    Party = pool.get('party.party')
    ContactMechanism = pool.get('party.contact_mechanism')
    resources, party_ids = {}, {}
    for record_activity in record_activities:
        resource = record_activity.record.record
        if resource is None or resource.id is None:
            resources[record_activity] = None
            continue
        resources[record_activity] = resource
        # A party is its own marketing party, with no field to compute
        if resource.__name__ == 'party.party':
            party_ids[record_activity] = resource.id
        elif resource.marketing_party:
            party_ids[record_activity] = resource.marketing_party.id
    # Party.contact_mechanisms is read one party at a time
    mechanisms = defaultdict(list)
    for mechanism in ContactMechanism.search([
                ('party', 'in', sorted(set(party_ids.values()))),
                ]):
        mechanisms[mechanism.party.id].append(mechanism)
    parties = {}
    for party in Party.browse(sorted(set(party_ids.values()))):
        # Read by batch before a change makes each party read alone
        party.rec_name, party.marketing_tracking_refused
        party.contact_mechanisms = mechanisms[party.id]
        parties[party.id] = party
    return {ra: (resource, parties.get(party_ids.get(ra)))
        for ra, resource in resources.items()}


def languages(party_ids):
    """Return the language code of each party: its language, or the
    database's

    The one rule for the emails and for the pages of their links."""
    pool = Pool()
    PartyLang = pool.get('party.party.lang')
    Lang = pool.get('ir.lang')
    default = config.get('database', 'language')
    languages = dict.fromkeys(party_ids, default)
    domain = [('party', 'in', sorted(party_ids))]
    if 'company' in PartyLang._fields:
        domain.append(('company', 'in',
                [Transaction().context.get('company'), None]))
    # Party.lang is a multi-value read one party at a time
    values = PartyLang.search_read(
        domain, order=[('id', 'DESC')], fields_names=['party', 'lang'])
    lang_ids = {v['lang'] for v in values if v['lang']}
    codes = {l.id: l.code for l in Lang.browse(sorted(lang_ids))}
    for value in values:
        if value['lang']:
            languages[value['party']] = codes[value['lang']]
    return languages


def compose(activity, record_activities):
    """Render the email of activity for each record activity and put them in
    the outbox

    Return the error of each record activity that could not be composed."""
    pool = Pool()
    Activity = pool.get('marketing.automation.activity')
    Email = pool.get('ir.email')
    if (activity.scenario.tracking == 'aggregate'
            and not activity.email_open_token):
        Activity.write([activity], {'email_open_token': new_token()})

    parties = _parties(record_activities)
    by_language, addresses, errors = _by_language(record_activities, parties)

    rows = []
    for language, language_activities in by_language.items():
        try:
            templates = Templates.of(activity, language)
        except Exception as exception:
            error = gettext(
                'marketing_automation.msg_render_failed',
                activity=activity.rec_name, exception=exception)
            errors.update(dict.fromkeys(language_activities, error))
            continue
        try:
            contexts = sandbox.template_contexts(
                [parties[ra][0] for ra in language_activities],
                templates.helpers)
        except Exception:
            # Each one on its own, so that only the records that may not
            # be read fail
            contexts = [None] * len(language_activities)
        for record_activity, context in zip(language_activities, contexts):
            resource, party = parties[record_activity]
            try:
                rows.append(_render(
                        record_activity, resource, party, templates,
                        addresses[party.id], context))
            except Exception as exception:
                errors[record_activity] = gettext(
                    'marketing_automation.msg_render_failed',
                    activity=activity.rec_name, exception=exception)
    Email.marketing_automation_store(rows)
    return errors


class Templates(namedtuple('Templates', [
            'title', 'template', 'helpers', 'from_headers', 'domain',
            'feedback_id'])):
    """The templates of an activity in a language, checked, and what every
    email of them has in common: the headers that name the sender, the
    domain of its Message-ID and its Feedback-ID"""
    __slots__ = ()

    @classmethod
    def of(cls, activity, language):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Lang = pool.get('ir.lang')
        configured_sender = _configured_sender()
        with Transaction().set_context(language=language):
            translated = Activity(activity.id)
            # One read: each of these lazy fields would be read alone
            texts, = Activity.read([activity.id],
                ['email_title', 'email_template', 'email_from'])
            title = texts['email_title'] or ''
            template = texts['email_template'] or ''
            sender = texts['email_from'] or configured_sender
            helpers = translated.email_context(Lang.get(language))
        # A template saved before a rule tightened fails only its own
        sandbox.email_title(title)
        sandbox.email_template(template)
        from_headers = Message([])
        set_from_header(_AddressHeaders(from_headers),
            configured_sender or sender, sender)
        domain = _domain(sender)
        # Gmail's feedback loop: campaign, customer, type and sender
        scenario = activity.scenario
        feedback_id = '%s:%s:marketing_automation:%s' % (
            activity.id, scenario.id if scenario else '', domain)
        return cls(title, template, helpers, from_headers.headers, domain,
            feedback_id)

    def render(self, resource, to, filter_, unsubscribe, headers=None,
            prefix='', context=None):
        """Return the subject, the HTML body and the message to the address
        to of resource, its links passed through filter_, with the headers
        given and prefix before the subject

        context is what the templates see, if already made for resource."""
        if context is None:
            context = sandbox.template_context(resource, self.helpers)
        subject = prefix + sandbox.render_title(self.title, context)
        body = sandbox.render_email(self.template, context, filter_)
        return subject, body, _message(
            self.from_headers, self.domain, to, subject, body,
            unsubscribe, headers or {})


def _by_language(record_activities, parties):
    """Return the record activities that have a recipient by language, the
    address of each party, and the error of those that have none"""
    party_languages = languages(
        {p.id for _, p in parties.values() if p is not None})
    # Once by party: a party may have several records
    addresses, no_address = {}, {}
    for party in {p for _, p in parties.values() if p is not None}:
        if bounce.usable_email(party):
            addresses[party.id] = recipient(party)
        elif party.contact_mechanism_get('email'):
            no_address[party.id] = gettext(
                'marketing_automation.msg_email_bounced',
                party=party.rec_name)
        else:
            no_address[party.id] = gettext(
                'marketing_automation.msg_no_email', party=party.rec_name)
    by_language, errors = defaultdict(list), {}
    for record_activity in record_activities:
        _, party = parties[record_activity]
        if party is None:
            errors[record_activity] = gettext(
                'marketing_automation.msg_no_party',
                record=record_activity.record.rec_name)
        elif party.id in no_address:
            errors[record_activity] = no_address[party.id]
        else:
            by_language[party_languages[party.id]].append(record_activity)
    return by_language, addresses, errors


def recipient(party):
    "Return the address of the emails to party"
    mechanism = bounce.usable_email(party)
    return format_address(mechanism.value, mechanism.name or party.rec_name)


def _render(record_activity, resource, party, templates, to, context=None):
    """Return the outbox row of the email of record_activity to the address
    to, rendered in context if given"""
    token = new_token()
    links = {}
    record = record_activity.record
    scenario = record.scenario
    tracking = scenario.tracking
    if party.marketing_tracking_refused:
        tracking = 'none'
    image = None
    if tracking == 'full':
        image = open_url(token)
    elif tracking == 'aggregate':
        image = aggregate_open_url(record_activity.activity.email_open_token)
    subject, body, message = templates.render(
        resource, to,
        track(token, record.uuid, links,
            clicks=tracking in {'full', 'clicks'}, image=image),
        unsubscribe_url(record.uuid),
        headers=_headers(token, templates), context=context)
    return {
        'recipients': to,
        'subject': subject,
        'body': body,
        'message_id': message['Message-ID'],
        'resource': str(resource),
        'marketing_automation_activity': record_activity.activity.id,
        'marketing_automation_record': record.id,
        'marketing_automation_record_activity': record_activity.id,
        'marketing_automation_party': party.id,
        'marketing_automation_token': token,
        'marketing_automation_links': json.dumps(links),
        'marketing_automation_message': as_text(message),
        }


def _headers(token, templates):
    """Return the headers that name the email of token: for the bounces and
    the feedback loops of the mail providers"""
    headers = {
        # Stable, so a bounce report names the email
        'Message-ID': '<%s@%s>' % (token, templates.domain),
        'Feedback-ID': templates.feedback_id,
        }
    bounce_domain = config.get('marketing', 'automation_bounce')
    if bounce_domain:
        # VERP: the return path names the email it comes back for
        headers['Return-Path'] = '<bounce+%s@%s>' % (token, bounce_domain)
    return headers


def _message(from_headers, domain, to, subject, body, unsubscribe, headers):
    """Return the message of body and of the plain text made from it, from
    the from_headers, with the headers given and otherwise a Message-ID in
    domain"""
    headers = dict(headers)
    # A boundary of ours needs no search of the body
    boundary = '=_' + new_token()
    message = Message([
            ('Content-Type',
                'multipart/alternative; boundary="%s"' % boundary),
            ('MIME-Version', '1.0'),
            *from_headers,
            ])
    message['To'] = _encoded('To', _address(to))
    message['Subject'] = _encoded('Subject', subject)
    message['Date'] = formatdate(localtime=True)
    message['Message-ID'] = (
        headers.pop('Message-ID', None) or make_msgid(domain=domain))
    for name, value in headers.items():
        message[name] = value
    # RFC 2369 and RFC 8058 one-click unsubscribe
    message['List-Unsubscribe'] = '<%s>' % unsubscribe
    message['List-Unsubscribe-Post'] = 'List-Unsubscribe=One-Click'
    message.text = ''.join([
            *('%s: %s\r\n' % h for h in message.headers),
            '\r\n--%s\r\n' % boundary,
            _part(html_to_text(body), 'plain'),
            '\r\n--%s\r\n' % boundary,
            _part(body, 'html'),
            '\r\n--%s--\r\n' % boundary,
            ])
    return message


def _part(content, subtype):
    "Return the text of a part of content in UTF-8, quoted-printable"
    # quoprimime encodes code points below 256 as bytes
    encoded = quoprimime.body_encode(
        content.encode('utf-8').decode('latin-1'), eol='\r\n')
    return ('Content-Type: text/%s; charset="utf-8"\r\n'
        'Content-Transfer-Encoding: quoted-printable\r\n\r\n%s'
        % (subtype, encoded))


class Message:
    """An email as the outbox keeps and sends it: its headers, as they are
    written, and its text

    Written by hand: the email package's generator cost as much as
    rendering the template. The headers that need it are encoded and
    folded as they are set, and the others are never folded: folding would
    break a long List-Unsubscribe URL."""
    __slots__ = ('headers', 'text')

    def __init__(self, headers):
        self.headers, self.text = headers, None

    def __setitem__(self, name, value):
        self.headers.append((name, value))

    def __getitem__(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value


class _AddressHeaders:
    "The headers of message, for set_from_header, encoded as addresses"

    def __init__(self, message):
        self.message = message

    def __setitem__(self, name, value):
        self.message[name] = _encoded(name, _address(value))


def _address(value):
    "Return the address value with its name encoded as RFC 2047 asks"
    return formataddr(parseaddr(value), charset='utf-8')


def _encoded(name, value):
    "Return the value of the header name encoded and folded if it must"
    if value.isascii() and len(name) + len(value) < 76:
        return value
    return Header(value, header_name=name).encode(linesep='\r\n')


def as_text(message):
    "Return the text of message as the outbox keeps and sends it"
    return message.text


def parsed(message):
    "Return message as an EmailMessage, its headers decoded"
    return email.message_from_string(
        message.text.replace('\r\n', '\n'), policy=default_policy)


def _domain(address):
    "Return the domain of address for the Message-ID"
    _, address = parseaddr(address or '')
    _, _, domain = address.rpartition('@')
    return domain or 'localhost'


Tracked = namedtuple('Tracked', [
        'record_activity', 'activity', 'record', 'state', 'opened', 'clicked',
        'opened_machine', 'filtered', 'links', 'sent_at'])


def lookup(tokens):
    """Return what the routes need to know of the emails of tokens, by
    token; an unknown token is missing"""
    cursor = Transaction().connection.cursor()
    tokens = sorted(set(tokens))
    result = {}
    for start in range(0, len(tokens), LOOKUP_SIZE):
        sub_tokens = tokens[start:start + LOOKUP_SIZE]
        query, params, indexes = _lookup_query(len(sub_tokens))
        params = list(params)
        for index, token in zip(indexes, sub_tokens):
            params[index] = token
        cursor.execute(query, params)
        for token, *row in cursor:
            result[token] = Tracked(*row)
    return result


# The most tokens that one lookup asks for
LOOKUP_SIZE = 64


@lru_cache(maxsize=LOOKUP_SIZE)
def _lookup_query(size):
    """Return the SQL of the lookup of size tokens, its parameters and the
    indexes of the tokens among them

    One query instead of two searches and their reads, compiled once by
    size as it runs at each tracked request."""
    pool = Pool()
    Email = pool.get('ir.email')
    RecordActivity = pool.get('marketing.automation.record.activity')
    email = Email.__table__()
    record_activity = RecordActivity.__table__()
    marks = [object() for _ in range(size)]
    query, params = tuple(email.join(record_activity, condition=(
                record_activity.id
                == email.marketing_automation_record_activity)).select(
            email.marketing_automation_token,
            record_activity.id, record_activity.activity,
            record_activity.record, record_activity.state,
            record_activity.email_opened, record_activity.email_clicked,
            record_activity.email_opened_machine,
            record_activity.email_filtered,
            email.marketing_automation_links,
            email.marketing_automation_sent_at,
            where=email.marketing_automation_token.in_(
                [Literal(m) for m in marks])))
    params = tuple(params)
    return query, params, [params.index(m) for m in marks]


def redirectable(target):
    "Tell whether target can go in a Location header"
    return isinstance(target, str) and not sandbox.CONTROL.search(target)


def target(links, key):
    "Return the target of the link key in the JSON links or None"
    try:
        links = json.loads(links or '{}')
    except ValueError:
        return None
    if isinstance(links, dict):
        return links.get(key)
