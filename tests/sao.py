# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Drive the sao web client in Debian's headless Chromium with Playwright

sao is installed from npm once, by the function of the demo, under
.demo/sao. Playwright's own browsers are not used: they cannot be
downloaded here."""
import importlib.util
import os
import time
from urllib.parse import urlsplit

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'demo', 'run.py')
CHROMIUM = '/usr/bin/chromium'
# Milliseconds: sao loads slowly when the machine is busy
TIMEOUT = 60000
# sao asks for these and trytond has none: not an error
OPTIONAL = ('/custom.css', '/custom.js', '/locale/')
DIALOGS = '.error-dialog.in, .warning-dialog.in, .user-warning-dialog.in'


def install():
    "Install sao as the demo does, once, and return its folder or None"
    if not os.path.isfile(DEMO):
        return None
    spec = importlib.util.spec_from_file_location('demo_run', DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    # The demo creates it before, for its other files
    os.makedirs(demo.DEMO_DIR, exist_ok=True)
    demo.install_sao()
    return demo.SAO_DIR if os.path.isfile(demo.SAO_STAMP) else None


def unavailable():
    "Return why no browser can be driven here, or None"
    if sync_playwright is None:
        return "playwright is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return "no Debian chromium at %s" % CHROMIUM


class Browser:
    """A page of headless Chromium for test, which fails on any JavaScript
    error or error dialog of sao, and saves the screenshots of the steps in
    directory

    Each action waits until sao has settled: sao redraws a form when its
    requests come back, and would wipe what is typed meanwhile."""

    def __init__(self, test, directory):
        self.test, self.directory = test, directory
        self.shots, self.errors, self.pending = 0, [], set()
        playwright = sync_playwright().start()
        test.addCleanup(playwright.stop)
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        test.addCleanup(browser.close)
        self.page = page = browser.new_page(
            viewport={'width': 1400, 'height': 900})
        page.set_default_timeout(TIMEOUT)
        page.on('pageerror', lambda e: self.errors.append('page: %s' % e))
        page.on('console', self._console)
        page.on('request', lambda r: self.pending.add(r))
        page.on('requestfinished', lambda r: self.pending.discard(r))
        page.on('requestfailed', lambda r: self.pending.discard(r))

    def _console(self, message):
        url = message.location.get('url') or ''
        if (message.type == 'error'
                and not urlsplit(url).path.startswith(OPTIONAL)
                # jQuery logs the exceptions of the callbacks as warnings
                or message.text.startswith('jQuery.Deferred exception')):
            self.errors.append('console: %s' % message.text)

    def login(self, url, login, password):
        self.page.goto(url)
        self.type(self.page.locator('#login'), login)
        self.click(self.page.locator('.login-dialog button[type=submit]'))
        entry = self.page.locator('.ask-dialog input[type=password]')
        entry.fill(password)
        # Not Tab: it reaches the button that resets the password
        entry.press('Enter')
        self.settle()

    def settle(self):
        """Wait until sao has made no request for half a second, and fail
        on any JavaScript error or error dialog"""
        quiet, end = 0, time.monotonic() + TIMEOUT / 1000
        while quiet < 3 and time.monotonic() < end:
            self.page.wait_for_timeout(200)
            quiet = 0 if self.pending else quiet + 1
        dialogs = self.page.locator(DIALOGS)
        if dialogs.count() or self.errors:
            self._shot('error')
            self.test.fail('sao shows an error: %s' % (
                    dialogs.first.inner_text() if dialogs.count()
                    else '\n'.join(dict.fromkeys(self.errors))))

    def step(self, name):
        "Check the step and save a screenshot of it"
        self.settle()
        self._shot(name)

    def _shot(self, name):
        self.shots += 1
        self.page.screenshot(path=os.path.join(
                self.directory, '%02d-%s.png' % (self.shots, name)))

    def click(self, locator):
        locator.click()
        self.settle()

    def type(self, locator, value):
        # Once more if a late redraw wiped it, as a person would
        for attempt in range(2):
            locator.fill(value)
            # Leaving the field commits its value to the record
            locator.press('Tab')
            self.settle()
            if locator.input_value() == value:
                return
        self.test.fail('%s does not keep %r' % (locator, value))

    def select(self, locator, label):
        locator.select_option(label=label)
        self.settle()

    def shows(self, locator, value):
        "Wait until the field shows value"
        expect(locator).to_have_value(value, timeout=TIMEOUT)

    def contains(self, locator, text):
        "Wait until the element contains text"
        expect(locator).to_contain_text(text, timeout=TIMEOUT)
