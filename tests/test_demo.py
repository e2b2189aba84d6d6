# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The configuration of the demo keeps every transaction whole, and Ctrl-C
stops the demo cleanly"""
import configparser
import importlib.util
import os
import pty
import shutil
import signal
import tempfile
import threading
import time
import unittest

from trytond.model.exceptions import ValidationError
from trytond.modules.marketing_automation.tests.tools import (
    DatabaseTestCase, free_port, setting)
from trytond.pool import Pool
from trytond.tests.test_tryton import DB_NAME
from trytond.transaction import Transaction

MODULE = 'marketing_automation'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'demo', 'run.py')


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


def processes_naming(text):
    "Return the ids of the processes whose command line holds text"
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join('/proc', name, 'cmdline'), 'rb') as file:
                command = file.read().replace(b'\0', b' ').decode(
                    errors='replace')
        except OSError:
            continue
        if text in command:
            found.append(int(name))
    return found


@unittest.skipUnless(os.path.isfile(DEMO), "no demo beside the tests")
@unittest.skipUnless(os.path.isdir('/proc'), "no /proc to find the processes")
class DemoStopTestCase(unittest.TestCase):
    "Ctrl-C stops the demo and what it started, with no error"

    def setUp(self):
        super().setUp()
        # Its own directory and ports: a demo may be running beside
        self.directory = tempfile.mkdtemp(prefix='ma-demo-')
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        # The web client is not needed to stop
        sao = os.path.join(self.directory, 'sao')
        os.makedirs(sao)
        open(os.path.join(sao, '.demo-installed'), 'w').close()

    def test_ctrl_c_while_creating(self):
        """Ctrl-C on make demo while the database is created stops the demo,
        the SMTP server and trytond-admin, with one line, and make exits
        with code 0"""
        env = os.environ.copy()
        env.update({
                'DEMO_DIR': self.directory,
                'DEMO_HTTP_PORT': str(free_port()),
                'DEMO_SMTP_PORT': str(free_port()),
                })
        # make demo in a terminal of its own, as a person runs it
        pid, terminal = pty.fork()
        if not pid:
            try:
                os.chdir(ROOT)
                os.execvpe('make', ['make', '--no-print-directory', 'demo'],
                    env)
            finally:
                os._exit(127)
        self.addCleanup(self.kill_group, pid)
        self.addCleanup(os.close, terminal)
        lines, creating, ended = [], threading.Event(), threading.Event()

        def read():
            pending = b''
            while True:
                try:
                    data = os.read(terminal, 4096)
                except OSError:
                    data = b''
                if not data:
                    break
                pending += data
                *done, pending = pending.split(b'\n')
                for line in done:
                    line = line.decode(errors='replace').rstrip('\r')
                    lines.append(line)
                    if 'Creating the database' in line:
                        creating.set()
            lines.append(pending.decode(errors='replace'))
            ended.set()
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.assertTrue(creating.wait(120), '\n'.join(lines))
        # Until trytond-admin works on the database
        config = os.path.join(self.directory, 'trytond.conf')
        deadline = time.monotonic() + 60
        while not [p for p in processes_naming(config)
                if 'trytond-admin' in self.command(p)]:
            self.assertLess(time.monotonic(), deadline, '\n'.join(lines))
            time.sleep(0.05)
        smtp = processes_naming(os.path.join(self.directory, 'mail'))
        self.assertTrue(smtp)

        # Ctrl-C, typed in the terminal
        os.write(terminal, b'\x03')
        _, status = os.waitpid(pid, 0)
        ended.wait(10)
        output = '\n'.join(lines)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, output)
        self.assertNotIn('Traceback', output)
        self.assertNotIn('ERROR', output)
        self.assertNotIn('Interrupt', output)
        # One line after the database step began, and nothing else
        after = output.split('Creating the database', 1)[1].splitlines()[1:]
        self.assertEqual(
            [l for l in after if l.strip() and l.strip() != '^C'],
            ['[demo] Stopped'])
        self.assertEqual(processes_naming(self.directory), [])

    def kill_group(self, pid):
        "Leave no process behind a failing test"
        for process in [pid] + processes_naming(self.directory):
            try:
                os.killpg(process, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    @staticmethod
    def command(pid):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as file:
                return file.read().decode(errors='replace')
        except OSError:
            return ''
