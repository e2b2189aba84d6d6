# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""A marketer tries and runs a scenario in the sao web client

A real trytond serves the module and sao on a fresh SQLite database, a real
SMTP server on the loopback receives the emails, and Debian's headless
Chromium clicks through sao with Playwright (tests/sao.py). Any JavaScript
error or error dialog fails the test. It runs in the SQLite run only."""
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from urllib.parse import urlsplit

from trytond.modules.marketing_automation.tests import sao
from trytond.modules.marketing_automation.tests.tools import (
    TEMPLATE, AdminDatabases, SMTPServer, free_port, links, logging_config,
    start_process, stop_process)

BIN = os.path.dirname(sys.executable)
BACKEND = urlsplit(os.environ.get(
        'TRYTOND_DATABASE__URI', 'sqlite://')).scheme.split('+')[0]
DATABASE = 'browser'
CONFIG = """\
[database]
uri = sqlite://
path = {directory}
[web]
listen = {netloc}
root = {sao}
[email]
uri = {smtp}
from = marketing@example.com
[marketing]
automation_base = {base}
"""


def remove_database(path):
    for suffix in ['', '-journal', '-wal', '-shm']:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


class BrowserTestCase(unittest.TestCase):
    "The marketer's tools in sao"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if BACKEND != 'sqlite':
            raise unittest.SkipTest("runs in the SQLite run only")
        reason = sao.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        cls.sao = sao.install()
        if not cls.sao:
            raise unittest.SkipTest("no sao: npm is missing or failed")

    def setUp(self):
        super().setUp()
        self.directory = tempfile.mkdtemp(prefix='ma-browser-')
        print('\n[browser] screenshots in %s' % self.directory,
            file=sys.stderr, flush=True)
        self.session = None
        self.smtp = SMTPServer().start()
        self.addCleanup(self.smtp.stop)
        self.url = 'http://127.0.0.1:%s/' % free_port()
        self.start_trytond()
        self.setup_data()
        self.browser = sao.Browser(self, self.directory)

    def start_trytond(self):
        conf = os.path.join(self.directory, 'trytond.conf')
        with open(conf, 'w') as file:
            file.write(CONFIG.format(
                    directory=self.directory, netloc=urlsplit(self.url).netloc,
                    sao=self.sao, smtp=self.smtp.uri,
                    base=self.url.rstrip('/')))
        logconf = logging_config(self.directory)
        AdminDatabases.create(DATABASE, self.directory)
        self.addCleanup(remove_database,
            os.path.join(self.directory, DATABASE + '.sqlite'))
        env = AdminDatabases.environ(TRYTOND_DATABASE_NAMES=DATABASE)
        log = open(os.path.join(self.directory, 'trytond.log'), 'wb')
        self.addCleanup(log.close)
        server = start_process([
                os.path.join(BIN, 'trytond'), '-c', conf,
                '--logconf', logconf],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(stop_process, server, 20)
        end = time.monotonic() + 120
        while True:
            self.assertIsNone(server.poll(), "trytond stopped")
            try:
                urllib.request.urlopen(self.url, timeout=10).close()
                return
            except OSError:
                self.assertLess(time.monotonic(), end, "trytond is not up")
                time.sleep(0.2)

    def rpc(self, method, *params):
        "Call trytond's JSON-RPC as admin"
        request = urllib.request.Request(
            self.url + DATABASE + '/rpc/', json.dumps({
                    'id': 0, 'method': method, 'params': params}).encode(),
            {'Content-Type': 'application/json'})
        if self.session:
            request.add_header('Authorization', 'Session ' + self.session)
        with urllib.request.urlopen(request, timeout=120) as response:
            result = json.load(response)
        self.assertFalse(result.get('error'), method)
        return result['result']

    def setup_data(self):
        user, token, _ = self.rpc(
            'common.db.login', 'admin', {'password': 'admin'}, 'en')
        self.session = base64.b64encode(
            ('admin:%s:%s' % (user, token)).encode()).decode()
        # Else the first login opens the module configuration wizard
        items = self.rpc('model.ir.module.config_wizard.item.search',
            [('state', '!=', 'done')], 0, None, None, {})
        self.rpc('model.ir.module.config_wizard.item.write',
            items, {'state': 'done'}, {})
        self.rpc('model.party.party.create', [{
                    'name': "Ada Lovelace",
                    'contact_mechanisms': [('create', [{
                                    'type': 'email',
                                    'value': 'ada@example.com'}])],
                    }], {})

    def receive(self, subject):
        "Wait for the email with subject and return it"
        end = time.monotonic() + sao.TIMEOUT / 1000
        while time.monotonic() < end:
            for message in self.smtp.messages:
                if message['Subject'] == subject:
                    return message
            time.sleep(0.2)
        self.fail('no email %r among %s' % (
                subject, [m['Subject'] for m in self.smtp.messages]))

    def cron(self, method):
        "Run the cron of method once, as Run Once of the scheduler does"
        crons = self.rpc('model.ir.cron.search',
            [('method', '=', method)], 0, None, None, {})
        self.assertTrue(crons, method)
        self.rpc('model.ir.cron.run_once', crons, {})

    def trigger(self):
        self.cron('marketing.automation.scenario|trigger')

    def process(self):
        self.cron('marketing.automation.record.activity|process')

    def show_email(self, download):
        """Open the rendered email that sao downloaded in a page of its own,
        as the marketer's browser does"""
        path = os.path.join(self.directory, 'email-preview.html')
        download.save_as(path)
        page = self.browser.page.context.browser.new_page(
            viewport={'width': 900, 'height': 700})
        self.addCleanup(page.close)
        page.goto('file://' + path)
        sao.expect(page.locator('body')).to_contain_text(
            "Dear Ada Lovelace", timeout=sao.TIMEOUT)
        targets = [a.get_attribute('href')
            for a in page.locator('a').all()]
        # The original targets, and the unsubscribe links on the page of a
        # test: nothing that would count
        test_page = self.url + 'm/' + DATABASE + '/u/test'
        self.assertEqual(targets, [
                'https://shop.example.com/offer',
                'https://shop.example.com/news?a=1&b=2',
                test_page, test_page])
        page.screenshot(path=os.path.join(
                self.directory, 'email-preview.png'))

    def test_marketer(self):
        "A marketer previews, tests, dry runs and runs a scenario"
        browser = self.browser
        page = browser.page
        browser.login(self.url + '#' + DATABASE, 'admin', 'admin')
        menu = page.locator('#menu')
        browser.click(menu.get_by_text("Marketing", exact=True))
        browser.step('login')
        browser.click(menu.get_by_text("Scenarios", exact=True))
        tab = page.locator('#tabcontent .tab-pane.active')
        browser.click(tab.locator('button#new_'))
        browser.type(tab.locator('input[name=name]'), "Welcome")
        browser.select(tab.locator('select[name=model]'), "Party")
        browser.shows(tab.locator('input[name=domain]'), '[]')
        browser.click(tab.locator('.form-one2many button[title=New]'))
        popup = page.locator('.modal.in').last
        browser.type(popup.locator('input[name=name]'), "Hello")
        browser.select(popup.locator('select[name=action]'), "Send Email")
        browser.type(popup.locator('input[name=email_title]'),
            "Hello ${record.name}")
        browser.type(popup.locator('textarea[name=email_template]'), TEMPLATE)
        browser.step('activity')
        browser.click(popup.locator('button#save'))
        browser.click(tab.locator('button#save'))
        activity = tab.locator('.form-one2many tbody tr').first
        browser.contains(activity, "Send Email")
        browser.step('saved')

        # The preview of the saved activity, and a test send
        activity.dblclick()
        browser.settle()
        browser.click(popup.locator('button[name=preview]'))
        wizard = page.locator('.wizard-dialog.in')
        browser.shows(wizard.locator('input[name=subject]'),
            "Hello Ada Lovelace")
        browser.shows(wizard.locator('input[name=to]'),
            "Ada Lovelace <ada@example.com>")
        browser.step('preview')
        # The email as it will look, rendered: sao downloads the report
        with page.expect_download() as download:
            browser.click(wizard.locator('button[title="Show Email"]'))
        self.show_email(download.value)
        browser.click(wizard.locator('button[title="Send Test"]'))
        browser.type(wizard.locator('input[name=addresses]'),
            'marketer@example.com')
        browser.step('test-addresses')
        browser.click(wizard.locator('button[title="Send"]'))
        browser.shows(wizard.locator('textarea[name=sent]'),
            "The test email to marketer@example.com goes out as this step "
            "ends.")
        browser.step('test-sent')
        test = self.receive("[TEST] Hello Ada Lovelace")
        self.assertEqual(test['To'], 'marketer@example.com')
        browser.click(wizard.locator('button[title="Close"]'))
        browser.click(popup.locator('button[title="Discard changes"]'))

        # Who would be enrolled now
        browser.click(tab.locator('button[name=dry_run]'))
        browser.shows(
            wizard.locator('input[type=text][name=enrol_count]'), '1')
        browser.contains(
            wizard.locator('.form-one2many').first, "Ada Lovelace")
        browser.step('dry-run')
        browser.click(wizard.locator('button[title="Close"]'))

        browser.click(tab.locator('button[name=run]'))
        browser.shows(tab.locator('select[name=state]'), '"running"')
        browser.step('running')

        self.trigger()
        self.process()
        message = self.receive("Hello Ada Lovelace")
        self.assertEqual(message['To'], 'Ada Lovelace <ada@example.com>')
        self.assertTrue(any(u.startswith(self.url + 'm/' + DATABASE + '/')
                for u in links(message)), links(message))
        browser.click(tab.locator('button#reload'))
        browser.step('sent')

        # An activity added while the scenario runs reaches Ada, and fails:
        # she has no address
        browser.click(tab.locator('.form-one2many button[title=New]'))
        popup = page.locator('.modal.in').last
        browser.type(popup.locator('input[name=name]'), "Offer")
        browser.select(popup.locator('select[name=action]'), "Send Email")
        browser.type(popup.locator('input[name=email_title]'),
            "Offer for ${record.addresses[0].city}")
        browser.step('added')
        browser.click(popup.locator('button#save'))
        browser.click(tab.locator('button#save'))
        self.process()
        browser.click(tab.locator('button#reload'))
        failed = tab.locator('input[type=text][name=failed_count]')
        browser.shows(failed, '1')
        browser.step('failed')

        # Fixed, then retried: it goes
        offer = tab.locator('.form-one2many tbody tr', has_text="Offer")
        offer.dblclick()
        browser.settle()
        popup = page.locator('.modal.in').last
        browser.type(popup.locator('input[name=email_title]'),
            "Offer for ${record.name}")
        browser.click(popup.locator('button#save'))
        browser.click(tab.locator('button#save'))
        offer.dblclick()
        browser.settle()
        popup = page.locator('.modal.in').last
        browser.click(popup.get_by_role('tab', name="Statistics"))
        browser.click(popup.locator('button[name=retry_failed]'))
        browser.step('retried')
        browser.click(popup.locator('button#save'))
        self.process()
        offer = self.receive("Offer for Ada Lovelace")
        self.assertEqual(offer['To'], 'Ada Lovelace <ada@example.com>')
        browser.click(tab.locator('button#reload'))
        browser.shows(failed, '0')
        browser.step('retry-sent')

        # Who got what
        browser.click(tab.locator('button#relate'))
        browser.click(page.get_by_role(
            'menuitem', name="Record Activities", exact=True))
        tab = page.locator('#tabcontent .tab-pane.active')
        browser.click(tab.get_by_role('tab', name="Done"))
        browser.contains(tab.locator('tbody tr').first, "Ada Lovelace")
        browser.step('record-activities')

        # What each activity did, in the report
        menu = page.locator('#menu')
        browser.click(menu.get_by_text("Reporting", exact=True))
        browser.click(menu.get_by_text("Activity Report", exact=True))
        tab = page.locator('#tabcontent .tab-pane.active')
        browser.contains(tab.locator('tbody'), "Offer")
        browser.step('activity-report')
        browser.click(menu.get_by_text("Scenario Report", exact=True))
        tab = page.locator('#tabcontent .tab-pane.active')
        browser.contains(tab.locator('tbody'), "Welcome")
        browser.step('scenario-report')
