# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"The configuration of the demo keeps every transaction whole"
import configparser
import importlib.util
import os
import unittest

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    DatabaseTestCase, setting)
from trytond.pool import Pool
from trytond.tests.test_tryton import DB_NAME
from trytond.transaction import Transaction

MODULE = 'marketing_automation'
DEMO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    'demo', 'run.py')


def demo_configuration():
    "Return the trytond configuration that the demo writes"
    spec = importlib.util.spec_from_file_location('demo_run', DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(demo.CONFIG_TEMPLATE.format(
            demo_dir='/tmp', sao_dir='/tmp', host='localhost',
            http_port=8000, smtp_port=8025))
    return parser


@unittest.skipUnless(os.path.isfile(DEMO), "no demo beside the tests")
class DemoConfigurationTestCase(DatabaseTestCase):
    "Test the demo's configuration"

    def count(self, model, domain):
        with Transaction().start(DB_NAME, 0, readonly=True):
            return Pool().get(model).search_count(domain)

    def test_refused_save_leaves_nothing(self):
        "A save refused with an error leaves nothing behind"
        demo = demo_configuration()
        # The rest points at the demo's own files
        stack = [setting('cache', option, value)
            for option, value in demo.items('cache')]
        self.assertTrue(stack)
        for context in stack:
            context.__enter__()
        try:
            # The caches poll the database from the second transaction on
            for attempt in range(3):
                with self.assertRaises(ValidationError):
                    with Transaction().start(DB_NAME, 1):
                        pool = Pool()
                        Scenario = pool.get('marketing.automation.scenario')
                        Scenario.create([{
                                    'name': "Refused %s" % attempt,
                                    'model': 'party.party',
                                    'domain': '[["shoe_size", "=", 42]]',
                                    }])
                self.assertEqual(self.count(
                        'marketing.automation.scenario',
                        [('name', 'like', 'Refused %')]), 0)
        finally:
            for context in reversed(stack):
                context.__exit__(None, None, None)
