#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Run the test suite on SQLite, and on PostgreSQL when it answers

It ends with one line: "N passed, M failed"."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SUITE = 'trytond.modules.marketing_automation.tests'
POSTGRESQL = os.environ.get(
    'MA_TEST_POSTGRESQL', 'postgresql://postgres@127.0.0.1:5432/')


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


def run_suite(pattern):
    "Run the suite in this process and print the counts as JSON"
    import unittest
    loader = unittest.TestLoader()
    if pattern:
        loader.testNamePatterns = [pattern]
    suite = unittest.TestSuite()
    here = os.path.dirname(os.path.abspath(__file__))
    for filename in sorted(os.listdir(here)):
        if filename.startswith('test_') and filename.endswith('.py'):
            suite.addTests(loader.loadTestsFromName(
                    SUITE + '.' + filename[:-len('.py')]))
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(
        result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
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


def run_backend(name, uri, pattern):
    env = dict(os.environ)
    env['TRYTOND_DATABASE__URI'] = uri
    env.pop('DB_NAME', None)
    cache = tempfile.mkdtemp(prefix='ma-db-cache-')
    if name == 'postgresql':
        env['DB_NAME'] = 'test_marketing_automation_%s' % os.getpid()
        env['DB_CACHE'] = uri.rstrip('/')
    else:
        env['DB_CACHE'] = cache
    command = [sys.executable, '-P', __file__, '--in-process']
    if pattern:
        command += ['-k', pattern]
    print('=== %s: %s' % (name, uri), flush=True)
    process = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    counts = {'passed': 0, 'failed': 1, 'skipped': 0}
    for line in process.stdout.splitlines():
        if line.startswith('@@counts '):
            counts = json.loads(line[len('@@counts '):])
        else:
            print(line)
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
    args = parser.parse_args()
    if args.in_process:
        run_suite(args.pattern)
        return 0

    backends = args.backend or ['sqlite', 'postgresql']
    totals = {'passed': 0, 'failed': 0, 'skipped': 0}
    ran = []
    for backend in backends:
        if backend == 'sqlite':
            counts = run_backend('sqlite', 'sqlite://', args.pattern)
        elif postgresql_answers():
            drop_postgresql_caches()
            try:
                counts = run_backend('postgresql', POSTGRESQL, args.pattern)
            finally:
                drop_postgresql_caches()
        else:
            print('=== postgresql: not reachable at %s, not run' % POSTGRESQL)
            continue
        ran.append(backend)
        for key in totals:
            totals[key] += counts[key]
    print('Backends run: %s' % ', '.join(ran))
    print('%s passed, %s failed' % (totals['passed'], totals['failed']))
    return 1 if totals['failed'] or not totals['passed'] else 0


if __name__ == '__main__':
    sys.exit(main())
