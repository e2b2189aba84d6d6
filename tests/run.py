#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Run the test suite on SQLite, and on PostgreSQL when it answers, both at
once unless --serial is given

The suite alone runs with "python -m unittest discover -s tests" on SQLite;
this runner adds the second backend and, at the end, checks that no process
that the suites started is left running: those are printed, killed and
counted as a failure.
It ends with one line: "N passed, M failed"."""
import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from collections import defaultdict

SUITE = 'trytond.modules.marketing_automation.tests'
POSTGRESQL = os.environ.get(
    'MA_TEST_POSTGRESQL', 'postgresql://postgres@127.0.0.1:5432/')
PR_SET_CHILD_SUBREAPER = 36


def postgresql_answers():
    try:
        import psycopg
    except ImportError:
        return False
    try:
        psycopg.connect(POSTGRESQL + 'postgres', connect_timeout=3).close()
    except Exception:
        return False
    return True


class TimedResult(unittest.TextTestResult):
    "Record how long each test takes, its class set-up included"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.durations = []
        self._last = time.monotonic()

    def stopTest(self, test):
        super().stopTest(test)
        now = time.monotonic()
        self.durations.append((now - self._last, str(test)))
        self._last = now

    def print_slowest(self, count=15):
        self.stream.writeln('Slowest tests (with their set-up):')
        for duration, name in sorted(self.durations, reverse=True)[:count]:
            self.stream.writeln('%7.1f s  %s' % (duration, name))


def run_suite(pattern):
    "Run the suite in this process and print the counts as JSON"
    loader = unittest.TestLoader()
    if pattern:
        # As unittest's -k, for the scenarios too which trytond matches
        # against their file name as it is
        if not any(c in pattern for c in '*?['):
            pattern = '*%s*' % pattern
        loader.testNamePatterns = [pattern]
    suite = unittest.TestSuite()
    here = os.path.dirname(os.path.abspath(__file__))
    for filename in sorted(os.listdir(here)):
        if filename.startswith('test_') and filename.endswith('.py'):
            suite.addTests(loader.loadTestsFromName(
                    SUITE + '.' + filename[:-len('.py')]))
    if not suite.countTestCases():
        print('No test matches -k %s' % pattern)
        print('@@counts ' + json.dumps(
                {'passed': 0, 'failed': 1, 'skipped': 0}))
        return
    result = unittest.TextTestRunner(
        verbosity=2, resultclass=TimedResult).run(suite)
    result.print_slowest()
    failed = len(result.failures) + len(result.errors) + len(
        result.unexpectedSuccesses)
    skipped = len(result.skipped)
    # A failed class set-up is an error without a test run
    passed = max(result.testsRun - failed - skipped, 0)
    print('@@counts ' + json.dumps(
            {'passed': passed, 'failed': failed, 'skipped': skipped}))


def drop_postgresql_caches():
    "Drop the cached test databases, whose schema may be out of date"
    import psycopg
    with psycopg.connect(POSTGRESQL + 'postgres', autocommit=True) as conn:
        names = [n for n, in conn.execute(
                "SELECT datname FROM pg_database "
                "WHERE datname LIKE 'test-%%' "
                "OR datname LIKE 'test_marketing_automation_%%'")]
        for name in names:
            try:
                conn.execute('DROP DATABASE IF EXISTS "%s"' % name)
            except psycopg.Error as exception:
                # Another run may be using it
                print('=== postgresql: %s kept: %s' % (
                        name, str(exception).splitlines()[0]))


def adopt_orphans():
    """Make this process the parent of the orphans of its descendants, as
    init is otherwise, to find those left running (Linux only)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants():
    "Return the processes below this one that are alive (not zombies)"
    children = defaultdict(list)
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/stat' % pid) as file:
                # The command name in parentheses may hold spaces
                state, ppid = file.read().rsplit(')', 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if state != 'Z':
            children[int(ppid)].append(int(pid))
    found, parents = [], [os.getpid()]
    while parents:
        pids = children[parents.pop()]
        found.extend(pids)
        parents.extend(pids)
    return found


def reap():
    "Wait for the adopted orphans that have ended"
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            return


def command_line(pid):
    try:
        with open('/proc/%s/cmdline' % pid, 'rb') as file:
            command = file.read().replace(b'\0', b' ')
    except OSError:
        return '?'
    return command.decode(errors='replace').strip()


def left_running(name):
    """Print and kill the processes that the suite left running and return
    how many there were

    Those stopping as the suite ends have a few seconds to do it."""
    if not os.path.isdir('/proc'):
        return 0
    deadline = time.monotonic() + 5
    while True:
        reap()
        pids = descendants()
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in pids:
        print('=== %s: left running: %s %s' % (name, pid, command_line(pid)))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    reap()
    return len(pids)


def start_backend(name, uri, pattern):
    "Start the suite on one backend in a process of its own"
    env = dict(os.environ)
    env['TRYTOND_DATABASE__URI'] = uri
    env.pop('DB_NAME', None)
    if name == 'postgresql':
        env['DB_NAME'] = 'test_marketing_automation_%s' % os.getpid()
        env['DB_CACHE'] = uri.rstrip('/')
    else:
        env['DB_CACHE'] = tempfile.mkdtemp(prefix='ma-db-cache-')
    command = [sys.executable, '-P', __file__, '--in-process']
    if pattern:
        command += ['-k', pattern]
    print('=== %s: %s' % (name, uri), flush=True)
    # Its output goes to a file: a pipe that nobody reads while the other
    # backend runs would fill up and block it
    output = tempfile.TemporaryFile('w+')
    process = subprocess.Popen(
        command, env=env, stdout=output, stderr=subprocess.STDOUT,
        text=True)
    return name, process, output


def finish_backend(name, process, output):
    "Wait for the suite of one backend, print its output and its counts"
    process.wait()
    output.seek(0)
    counts = {'passed': 0, 'failed': 1, 'skipped': 0}
    for line in output:
        if line.startswith('@@counts '):
            counts = json.loads(line[len('@@counts '):])
        else:
            print(line, end='')
    output.close()
    if process.returncode and not counts['failed']:
        counts['failed'] = 1
    print('=== %s: %s passed, %s failed, %s skipped' % (
            name, counts['passed'], counts['failed'], counts['skipped']),
        flush=True)
    return counts


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--in-process', action='store_true')
    parser.add_argument('-k', dest='pattern')
    parser.add_argument(
        '--backend', choices=['sqlite', 'postgresql'], action='append')
    parser.add_argument('--serial', action='store_true',
        help="run the backends one after the other")
    args = parser.parse_args()
    if args.in_process:
        run_suite(args.pattern)
        return 0

    backends = args.backend or ['sqlite', 'postgresql']
    if not adopt_orphans():
        print('=== cannot check for processes left running: '
            'no PR_SET_CHILD_SUBREAPER')
    totals = {'passed': 0, 'failed': 0, 'skipped': 0}
    started = []
    if 'postgresql' in backends:
        if postgresql_answers():
            drop_postgresql_caches()
            started.append(start_backend(
                    'postgresql', POSTGRESQL, args.pattern))
        else:
            print('=== postgresql: not reachable at %s, not run' % POSTGRESQL)
    ran = []
    if 'sqlite' in backends:
        if args.serial:
            ran += finish(started, totals)
        # Otherwise the backends run at once: much of each suite waits on
        # processes and sockets rather than on the processor
        started.append(start_backend('sqlite', 'sqlite://', args.pattern))
    ran += finish(started, totals)
    if 'postgresql' in ran:
        drop_postgresql_caches()
    if left_running('suite'):
        totals['failed'] += 1
    print('Backends run: %s' % ', '.join(sorted(ran)))
    print('%s passed, %s failed' % (totals['passed'], totals['failed']))
    return 1 if totals['failed'] or not totals['passed'] else 0


def finish(started, totals):
    "Finish the suites started, add their counts to totals; return their names"
    ran = []
    while started:
        name, process, output = started.pop(0)
        counts = finish_backend(name, process, output)
        ran.append(name)
        for key in totals:
            totals[key] += counts[key]
    return ran


if __name__ == '__main__':
    sys.exit(main())
