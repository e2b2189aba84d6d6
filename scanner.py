# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Tell a person from a scanner, a prefetch or a privacy proxy

Only the verdict is kept: no address and no user agent is stored.
A site extends the lists with the [marketing] automation_scanners and
automation_machine_opens options: regular expressions, one a line."""
import re
from functools import lru_cache

import trytond.config as config

PERSON = 'person'
SCANNER = 'scanner'
MACHINE = 'machine'
PREFETCH = {'prefetch', 'preview', 'prerender'}

# Searched case-insensitively in the User-Agent header.
# Their opens and clicks are ignored: they move no branch.
SCANNERS = (
    'bot\\b', 'bot/', 'crawler', 'spider', 'slurp', 'preview', 'scanner',
    'checker', 'validator', 'monitor', '^curl/', '^wget/', 'python-requests',
    'python-urllib', 'python-httpx', 'aiohttp', 'go-http-client', 'java/',
    'okhttp', 'apache-httpclient', 'libwww-perl', 'headlesschrome',
    'phantomjs', 'facebookexternalhit', 'slackbot', 'twitterbot',
    'linkedinbot', 'discordbot', 'telegrambot', 'whatsapp', 'skypeuripreview',
    'office existence discovery', 'safelinks', 'barracuda', 'mimecast',
    'proofpoint', 'symantec', 'forcepoint', 'zscaler', 'trendmicro',
    'trend micro', 'sophos', 'fortiguard', 'ironport', 'cisco', 'urldefense',
    'urlscan', 'virustotal', 'bitdefender', 'kaspersky', 'avast', 'eset',
    )
# Their image fetches are machine opens: they count apart and fire no
# "opened" branch. Apple Mail Privacy Protection preloads with a bare agent.
MACHINE_OPENS = (
    '^Mozilla/5\\.0$',
    )

_compiled = {}


def _pattern(option, defaults):
    "Return the pattern of the defaults and of the configuration option"
    extra = config.get('marketing', option, default='') or ''
    key = (option, extra)
    if key not in _compiled:
        patterns = list(defaults) + [
            p.strip() for p in extra.splitlines() if p.strip()]
        _compiled[key] = re.compile(
            '|'.join('(?:%s)' % p for p in patterns), re.IGNORECASE)
    return _compiled[key]


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
    return _classify_user_agent(
        user_agent, _pattern('automation_machine_opens', MACHINE_OPENS),
        _pattern('automation_scanners', SCANNERS))


# The same few user agents come again and again, and the patterns are long
@lru_cache(maxsize=1024)
def _classify_user_agent(user_agent, machine_opens, scanners):
    if machine_opens.search(user_agent):
        return MACHINE
    if scanners.search(user_agent):
        return SCANNER
    return PERSON
