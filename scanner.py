# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Tell a person from a scanner, a prefetch or a privacy proxy

Only the verdict is kept: no address and no user agent is stored."""
import re
from functools import lru_cache

from trytond.tools import file_open

PERSON = 'person'
SCANNER = 'scanner'
MACHINE = 'machine'
PREFETCH = {'prefetch', 'preview', 'prerender'}


@lru_cache(maxsize=None)
def agents():
    "Return the compiled patterns of bots.txt by section"
    sections = {}
    section = None
    with file_open('marketing_automation/bots.txt', mode='r') as fp:
        for line in fp:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            if line.startswith('[') and line.endswith(']'):
                section = sections.setdefault(line[1:-1], [])
            elif section is not None:
                section.append(line)
    return {
        name: re.compile('|'.join('(?:%s)' % p for p in patterns), re.I)
        for name, patterns in sections.items() if patterns}


def _match(section, user_agent):
    pattern = agents().get(section)
    return bool(pattern and pattern.search(user_agent))


def classify(request):
    "Return who makes the request: a person, a scanner or a machine"
    if request.method != 'GET':
        return SCANNER
    for header in ['Purpose', 'Sec-Purpose', 'X-Purpose', 'X-Moz']:
        value = request.headers.get(header, '').lower()
        if any(p in value for p in PREFETCH):
            return SCANNER
    user_agent = request.headers.get('User-Agent', '').strip()
    if not user_agent:
        return SCANNER
    if _match('machine_open', user_agent):
        return MACHINE
    if _match('scanner', user_agent):
        return SCANNER
    return PERSON
