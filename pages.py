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

from trytond.protocols.wrappers import HTTPStatus, Response

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


def page(language, text, title=None, button=None):
    "Return the HTML of a page with text, and a form with button if any"
    title = title or text
    content = '<p>%s</p>' % html.escape(text)
    if button:
        content += (
            '<form method="post">'
            '<button type="submit" name="unsubscribe" value="1">%s</button>'
            '</form>') % html.escape(button)
    return (
        '<!DOCTYPE html><html lang="%(lang)s"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        '<title>%(title)s</title><style>%(style)s</style></head>'
        '<body><main><h1>%(title)s</h1>%(content)s</main></body></html>') % {
        'lang': html.escape((language or 'en').replace('_', '-')),
        'title': html.escape(title),
        'style': STYLE,
        'content': content,
        }


def response(content, status=HTTPStatus.OK):
    return Response(content, status, content_type='text/html', headers={
            'Cache-Control': 'no-store',
            })
