# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The pages a recipient sees: unsubscribe, confirmation and unknown link

They are small, readable on a phone and carry their style inline: a page
opened from an email loads nothing else."""
import html
import os
from functools import lru_cache

import polib
from lxml import etree

from trytond.i18n import gettext
from trytond.pool import Pool
from trytond.protocols.wrappers import HTTPStatus, Response
from trytond.report import Report
from trytond.transaction import Transaction

from .mixin import company_of

HERE = os.path.dirname(__file__)
LOCALE = os.path.join(HERE, 'locale')
STYLE = '''
body{margin:0;padding:1.5rem 1rem;background:#f4f5f7;color:#1f2328;
font:1.0625rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:32rem;margin:2rem auto;padding:1.5rem;background:#fff;
border-radius:.5rem;box-shadow:0 1px 3px rgba(0,0,0,.15)}
h1{margin:0 0 1rem;font-size:1.375rem;line-height:1.3}
p{margin:0 0 1.25rem}
button{min-height:2.75rem;padding:.625rem 1.25rem;border:0;
border-radius:.375rem;background:#1f5fbf;color:#fff;font:inherit;
font-weight:600;cursor:pointer}
button:hover{background:#174a96}
button:focus-visible{outline:3px solid #f0b400;outline-offset:2px}
.company{margin:0 0 .5rem;color:#57606a;font-size:.9375rem;font-weight:600}
'''.replace('\n', '')


@lru_cache(maxsize=1)
def languages():
    "Return the codes of the languages of the pages, English first"
    codes = sorted(
        n[:-len('.po')] for n in os.listdir(LOCALE) if n.endswith('.po'))
    return ['en'] + codes


@lru_cache(maxsize=1)
def _sources():
    "Return the English text of the messages by id"
    tree = etree.parse(os.path.join(HERE, 'message.xml'))
    return {
        r.get('id'): r.findtext('field[@name="text"]')
        for r in tree.iter('record')}


@lru_cache(maxsize=None)
def _catalog(language):
    path = os.path.join(LOCALE, language + '.po')
    if not os.path.isfile(path):
        return {}
    return {e.msgctxt: e.msgstr
        for e in polib.pofile(path) if e.msgstr and not e.obsolete}


def translate(language, message_id):
    """Return the text of the message in language, without the database

    The page of an unknown link may have no database to read from."""
    for code in [language, (language or '').split('_')[0]]:
        text = _catalog(code).get('model:ir.message,text:' + message_id)
        if text:
            return text
    return _sources()[message_id]


def visitor_language(request):
    "Return the language of the pages that the visitor prefers"
    offered = {c.replace('_', '-'): c for c in languages()}
    best = request.accept_languages.best_match(list(offered), default='en')
    return offered.get(best, 'en')


def page(language, text):
    "Return the HTML of a page that says text"
    return (
        '<!DOCTYPE html><html lang="%(lang)s"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        '<title>%(text)s</title><style>%(style)s</style></head>'
        '<body><main><h1>%(text)s</h1></main></body></html>') % {
        'lang': html.escape((language or 'en').replace('_', '-')),
        'text': html.escape(text),
        'style': STYLE,
        }


def response(content, status=HTTPStatus.OK):
    return Response(content, status, content_type='text/html', headers={
            'Cache-Control': 'no-store',
            })


class UnsubscribeReport(Report):
    """The unsubscribe and confirmation pages of a record

    A report, so a site can change its template."""
    __name__ = 'marketing.automation.unsubscribe'

    @classmethod
    def get_context(cls, records, header, data):
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        context = super().get_context(records, header, data)
        record, = records
        language = Transaction().language or 'en'
        # Read again in the party's language
        scenario = Scenario(record.scenario.id)
        scenario = scenario.public_name or scenario.rec_name
        if data.get('confirm'):
            text = gettext(
                'marketing_automation.msg_unsubscribe_confirm',
                scenario=scenario)
            button = gettext('marketing_automation.msg_unsubscribe_button')
        else:
            text = gettext(
                'marketing_automation.msg_unsubscribed', scenario=scenario)
            button = None
        context.update({
                'title': gettext('marketing_automation.msg_unsubscribe_title'),
                'text': text,
                'button': button,
                'style': STYLE,
                'html_language': language.replace('_', '-'),
                'link': None if data.get('confirm') else data.get('link'),
                'company': company_name(record),
                })
        return context


def company_name(record):
    """Return the name of the company whose emails record receives: the
    company of the record, or the only company of the database, if any"""
    pool = Pool()
    try:
        Company = pool.get('company.company')
    except KeyError:
        return None
    company_id = company_of(record.record) if record.record else None
    if company_id is not None:
        return Company(company_id).rec_name
    # A model without company, as the party, names none; one company alone
    # is the one that sends
    companies = Company.search([], order=[('id', 'ASC')], limit=2)
    if len(companies) == 1:
        return companies[0].rec_name


def unsubscribe_page(record, confirm, link=None):
    """Answer the unsubscribe page of record, in the current language, with
    link to follow once unsubscribed"""
    Page = Pool().get('marketing.automation.unsubscribe', type='report')
    _, content, _, _ = Page.execute([record.id], {
            'confirm': confirm,
            'link': link,
            })
    return response(content)
