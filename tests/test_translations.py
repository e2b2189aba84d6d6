# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The translations are in step with the strings of the module

The strings are exported as trytond's translation export does; each
locale/<lang>.po must translate every one of them, keep no entry whose
source is gone and keep the placeholders of the source."""
import os
import re
import sys

import polib

from trytond.modules.marketing_automation.tests import extension
from trytond.modules.marketing_automation.tests.tools import (
    EXTRAS, DatabaseTestCase)
from trytond.pool import Pool
from trytond.tests.test_tryton import with_transaction

MODULE = 'marketing_automation'
LOCALE = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'locale')
# The languages of Tryton's core modules besides English
LANGUAGES = [
    'bg', 'ca', 'cs', 'de', 'es', 'es_419', 'et', 'fa', 'fi', 'fr', 'hu',
    'id', 'it', 'lo', 'lt', 'nl', 'pl', 'pt', 'ro', 'ru', 'sl', 'tr', 'uk',
    'zh_CN']
PLACEHOLDER = re.compile(r'%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]')


def placeholders(text):
    return sorted(PLACEHOLDER.findall(text or ''))


def export_strings():
    "Return the POFile of the module's strings, as trytond exports them"
    pool = Pool()
    Translation = pool.get('ir.translation')
    TranslationSet = pool.get('ir.translation.set', type='wizard')
    session_id, _, _ = TranslationSet.create()
    try:
        TranslationSet.execute(session_id, {}, 'set_')
    finally:
        TranslationSet.delete(session_id)
    content = Translation.translation_export('en', MODULE)
    strings = polib.pofile(content.decode('utf-8'))
    for entry in [e for e in strings if of_test_module(e)]:
        strings.remove(entry)
    return strings


def of_test_module(entry):
    "Tell whether entry is a string of the test module of extension.py"
    if '.test.' in entry.msgctxt:
        return True
    for name, selection in extension.SELECTIONS.items():
        if (entry.msgctxt.startswith(
                    'selection:marketing.automation.activity,%s:' % name)
                and entry.msgid in dict(selection).values()):
            return True
    return False


def check(language, strings):
    "Return the problems of the translation of language for strings"
    path = os.path.join(LOCALE, language + '.po')
    if not os.path.isfile(path):
        return ['%s: no file %s' % (language, path)]
    translated = {
        (e.msgctxt, e.msgid): e for e in polib.pofile(path)
        if not e.obsolete}
    problems = []
    for entry in strings:
        key = entry.msgctxt, entry.msgid
        found = translated.pop(key, None)
        if found is None or not found.msgstr or 'fuzzy' in found.flags:
            problems.append('%s: missing %s %r' % (language, *key))
        elif placeholders(found.msgstr) != placeholders(entry.msgid):
            problems.append('%s: placeholders differ in %s: %r -> %r' % (
                    language, entry.msgctxt, entry.msgid, found.msgstr))
    for key in translated:
        problems.append('%s: source gone %s %r' % (language, *key))
    return problems


class TranslationTestCase(DatabaseTestCase):
    "Translations"
    # As the module test, whose activated database it shares
    modules = ['marketing_automation'] + EXTRAS

    @with_transaction()
    def test_every_language(self):
        "Every language translates every string of the module"
        strings = export_strings()
        self.assertGreater(len(strings), 100)
        problems = []
        for language in LANGUAGES:
            problems.extend(check(language, strings))
        self.assertFalse(problems, '\n'.join(problems[:50]) + (
                '\n… %s more' % (len(problems) - 50)
                if len(problems) > 50 else ''))

    def test_check_sees_problems(self):
        "The check reports a missing string, a stale one and a placeholder"
        strings = polib.POFile()
        for ctxt, msgid in [
                ('model:ir.message,text:a', 'Hello %(name)s'),
                ('field:x,y:', 'Name')]:
            strings.append(polib.POEntry(msgctxt=ctxt, msgid=msgid))
        path = os.path.join(LOCALE, 'xx_TEST.po')
        po = polib.POFile()
        po.append(polib.POEntry(
                msgctxt='model:ir.message,text:a', msgid='Hello %(name)s',
                msgstr='Bonjour %(nom)s'))
        po.append(polib.POEntry(
                msgctxt='field:x,z:', msgid='Gone', msgstr='Parti'))
        po.save(path)
        try:
            problems = check('xx_TEST', strings)
        finally:
            os.remove(path)
        self.assertEqual(len(problems), 3, problems)
        self.assertIn('placeholders differ', problems[0])
        self.assertIn('missing field:x,y:', problems[1])
        self.assertIn('source gone field:x,z:', problems[2])


def main():
    "Write the module's strings to the path given, as a template"
    from trytond.tests.test_tryton import activate_module
    from trytond.transaction import Transaction
    activate_module(TranslationTestCase.modules)
    from trytond.tests.test_tryton import DB_NAME
    with Transaction().start(DB_NAME, 0):
        export_strings().save(sys.argv[1])


if __name__ == '__main__':
    main()
