#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Benchmark marketing_automation against the floor of sending e-mails

Run from the repository root with the Python of the virtual environment:
.venv/bin/python -P benchmarks/run.py [--backend sqlite,postgresql]
[--sizes 1000,10000] [--enrol-sizes 100000] [--no-wrk]

It reports figures and asserts nothing: the targets of the issue are
printed as PASS or FAIL lines. See benchmarks/README.rst."""
import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    BIN, ROOT, USER_AGENT, SMTPCount, parse_result, write_config)

RESULTS = os.path.join(HERE, 'results')
PYTHON = os.path.join(BIN, 'python')
POSTGRESQL = os.environ.get(
    'MA_BENCH_POSTGRESQL', 'postgresql://postgres@127.0.0.1:5432/')
TEMPLATE_DB = 'ma_bench_template_%s' % os.getpid()

LOGGING_CONFIG = '''\
[loggers]
keys = root, werkzeug

[logger_werkzeug]
level = WARNING
handlers =
qualname = werkzeug

[handlers]
keys = stderr

[formatters]
keys = simple

[logger_root]
level = WARNING
handlers = stderr

[handler_stderr]
class = StreamHandler
formatter = simple
args = (sys.stderr,)

[formatter_simple]
format = %(asctime)s %(levelname)s %(name)s %(message)s
'''


_T0 = time.time()


def log(message):
    print('%7.1fs %s' % (time.time() - _T0, message), file=sys.stderr,
        flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_port(port, timeout=60, process=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError("the process ended before listening")
        try:
            socket.create_connection(('127.0.0.1', port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listens on port %s" % port)


def sizes(value):
    return [int(s.replace('_', '')) for s in value.split(',') if s.strip()]


class SMTPSink:
    "The real aiosmtpd server of the benchmark, in its own process"

    def __init__(self, directory):
        self.port = free_port()
        self.count_file = os.path.join(directory, 'smtp.count')
        self.process = subprocess.Popen([
                PYTHON, '-P', os.path.join(HERE, 'smtp_sink.py'),
                '--port', str(self.port), '--count-file', self.count_file,
                ], stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()
        wait_port(self.port, process=self.process)
        self.count = SMTPCount(self.count_file)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Backend:
    "Create the template database once and fresh copies of it"

    def __init__(self, name, directory, smtp_port):
        self.name = name
        self.directory = os.path.join(directory, name)
        os.makedirs(self.directory, exist_ok=True)
        self.config = os.path.join(self.directory, 'trytond.conf')
        self.smtp_port = smtp_port
        if name == 'sqlite':
            write_config(
                self.config, 'sqlite://', self.directory, smtp_port)
        else:
            write_config(self.config, POSTGRESQL, None, smtp_port)
        self.databases = []

    def available(self):
        if self.name == 'sqlite':
            return True
        try:
            import psycopg
            psycopg.connect(
                POSTGRESQL + 'postgres', connect_timeout=3).close()
        except Exception as exception:
            log("PostgreSQL does not answer at %s: %s" % (
                    POSTGRESQL, exception))
            return False
        return True

    def _pg(self, *statements):
        import psycopg
        with psycopg.connect(POSTGRESQL + 'postgres', autocommit=True) as c:
            for statement in statements:
                c.execute(statement)

    def create_template(self):
        log("[%s] creating the template database" % self.name)
        if self.name == 'sqlite':
            open(os.path.join(
                    self.directory, TEMPLATE_DB + '.sqlite'), 'w').close()
        else:
            self._pg(
                'DROP DATABASE IF EXISTS "%s"' % TEMPLATE_DB,
                'CREATE DATABASE "%s" ENCODING \'unicode\'' % TEMPLATE_DB)
        passfile = os.path.join(self.directory, 'admin.pass')
        with open(passfile, 'w') as fp:
            fp.write('admin\n')
        env = dict(os.environ, TRYTONPASSFILE=passfile)
        subprocess.run([
                os.path.join(BIN, 'trytond-admin'), '-c', self.config,
                '-d', TEMPLATE_DB, '--all', '-u', 'marketing_automation',
                '--activate-dependencies', '--email', 'admin@example.com',
                ], env=env, check=True, stdout=subprocess.DEVNULL)
        self.databases.append(TEMPLATE_DB)

    def fresh(self, name):
        "Return a fresh copy of the template database"
        if self.name == 'sqlite':
            shutil.copyfile(
                os.path.join(self.directory, TEMPLATE_DB + '.sqlite'),
                os.path.join(self.directory, name + '.sqlite'))
        else:
            self._pg(
                'DROP DATABASE IF EXISTS "%s"' % name,
                'CREATE DATABASE "%s" TEMPLATE "%s"' % (name, TEMPLATE_DB))
        self.databases.append(name)
        return name

    def drop(self, name):
        if self.name == 'sqlite':
            try:
                os.remove(os.path.join(self.directory, name + '.sqlite'))
            except FileNotFoundError:
                pass
        else:
            try:
                self._pg('DROP DATABASE IF EXISTS "%s"' % name)
            except Exception as exception:
                log("could not drop %s: %s" % (name, exception))
        if name in self.databases:
            self.databases.remove(name)

    def cleanup(self):
        for name in list(self.databases):
            self.drop(name)


def run_subprocess(command, env=None):
    process = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env)
    result = parse_result(process.stdout)
    if process.returncode or result is None:
        log(process.stdout[-3000:])
        log(process.stderr[-5000:])
        raise RuntimeError("%s failed" % ' '.join(command[:4]))
    return result


def floor(sink, size):
    return run_subprocess([
            PYTHON, '-P', os.path.join(HERE, 'floor.py'),
            '--size', str(size), '--smtp-port', str(sink.port),
            '--count-file', sink.count_file])


def module(backend, sink, size, options, enrol_only=False):
    database = backend.fresh('ma_bench_%s_%s' % (size, os.getpid()))
    command = [
        PYTHON, '-P', os.path.join(HERE, 'steps.py'),
        '--config', backend.config, '--database', database,
        '--backend', backend.name, '--size', str(size),
        '--count-file', sink.count_file, '--insert-select',
        '--profile-dir', options.profile_dir]
    if enrol_only:
        command.append('--enrol-only')
    for step in options.profile or []:
        command += ['--profile', step]
    if options.route_opens is not None:
        command += ['--route-opens', str(options.route_opens)]
    try:
        return run_subprocess(command)
    finally:
        backend.drop(database)


def wrk(backend, sink, options):
    "Measure the throughput of the routes on trytond's own HTTP server"
    if not shutil.which('wrk'):
        log("wrk is missing: the route throughput is skipped "
            "(apt-get install wrk)")
        return {'skipped': 'wrk is missing'}
    recipients = options.wrk_recipients
    database = backend.fresh('ma_bench_wrk_%s' % os.getpid())
    paths = os.path.join(backend.directory, 'wrk-paths')
    port = free_port()
    config = os.path.join(backend.directory, 'trytond-wrk.conf')
    write_config(
        config, POSTGRESQL if backend.name == 'postgresql' else 'sqlite://',
        backend.directory if backend.name == 'sqlite' else None,
        sink.port, web_listen='127.0.0.1:%s' % port)
    logconf = os.path.join(backend.directory, 'logging.conf')
    with open(logconf, 'w') as fp:
        fp.write(LOGGING_CONFIG)
    server = None
    try:
        log("[%s] wrk: preparing %s recipients" % (backend.name, recipients))
        run_subprocess([
                PYTHON, '-P', os.path.join(HERE, 'steps.py'),
                '--config', config, '--database', database,
                '--backend', backend.name, '--size', str(recipients),
                '--count-file', sink.count_file, '--wrk-paths', paths])
        with open(paths + '.open') as fp:
            opens = fp.read().split()
        with open(paths + '.click') as fp:
            clicks = fp.read().split()
        env = dict(os.environ, TRYTOND_DATABASE_NAMES=database)
        server = subprocess.Popen([
                os.path.join(BIN, 'trytond'), '-c', config,
                '--logconf', logconf],
            env=env, stdout=subprocess.DEVNULL)
        wait_port(port, process=server)
        base = 'http://127.0.0.1:%s' % port
        # Warm the pool and the caches before measuring
        import urllib.request
        for path in [opens[-1], clicks[-1]]:
            request = urllib.request.Request(
                base + path, headers={'User-Agent': USER_AGENT})
            try:
                urllib.request.urlopen(request, timeout=30).read()
            except Exception:
                pass

        runs = [
            ('rpc_baseline', 'rpc.lua', base + '/rpc/', None),
            ('open_one', 'browser.lua', base + opens[0], None),
            ('open_rotate', 'rotate.lua', base + '/', paths + '.open'),
            ('click_one', 'browser.lua', base + clicks[0], None),
            ('click_rotate', 'rotate.lua', base + '/', paths + '.click'),
            ]
        results = {}
        for name, script, url, rotation in runs:
            log("[%s] wrk: %s for %ss" % (
                    backend.name, name, options.wrk_duration))
            env = dict(os.environ,
                WRK_SCRIPTS=os.path.join(HERE, 'wrk'),
                WRK_USER_AGENT=USER_AGENT,
                WRK_PATHS=rotation or '')
            process = subprocess.run([
                    'wrk', '-t', str(options.wrk_threads),
                    '-c', str(options.wrk_connections),
                    '-d', '%ss' % options.wrk_duration,
                    '--timeout', '10s',
                    '-s', os.path.join(HERE, 'wrk', script), url],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            figures = None
            for line in process.stdout.splitlines():
                if line.startswith('@@wrk '):
                    figures = json.loads(line[len('@@wrk '):])
            if figures is None:
                log(process.stdout + process.stderr)
                results[name] = {'error': 'wrk failed'}
                continue
            seconds = figures['duration_us'] / 1e6
            errors = sum(figures[k] for k in [
                    'connect', 'read', 'write', 'status', 'timeout'])
            results[name] = {
                'requests': figures['requests'],
                'rps': round(figures['requests'] / seconds, 1),
                'p50_ms': round(figures['p50_us'] / 1000, 2),
                'p99_ms': round(figures['p99_us'] / 1000, 2),
                'max_ms': round(figures['max_us'] / 1000, 2),
                'errors': errors,
                'errors_detail': {k: figures[k] for k in [
                        'connect', 'read', 'write', 'status', 'timeout']},
                }
        results['recipients'] = recipients
        results['duration_s'] = options.wrk_duration
        results['connections'] = options.wrk_connections
        results['threads'] = options.wrk_threads
        return results
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        backend.drop(database)


def bench_backend(name, sink, options, directory):
    backend = Backend(name, directory, sink.port)
    if not backend.available():
        return {'backend': name, 'skipped': 'not available'}
    result = {'backend': name, 'floor': {}, 'module': {}, 'enrol_only': {}}
    try:
        backend.create_template()
        for size in options.sizes:
            log("[%s] floor at N=%s" % (name, size))
            result['floor'][str(size)] = floor(sink, size)
            log("[%s] module at N=%s" % (name, size))
            result['module'][str(size)] = module(
                backend, sink, size, options)
        for size in options.enrol_sizes:
            if size in options.sizes:
                continue
            log("[%s] enrolment at N=%s" % (name, size))
            result['enrol_only'][str(size)] = module(
                backend, sink, size, options, enrol_only=True)
        if name == 'postgresql' and not options.no_wrk:
            try:
                result['wrk'] = wrk(backend, sink, options)
            except Exception as exception:
                log("[%s] wrk failed: %s" % (name, exception))
                result['wrk'] = {'skipped': 'failed: %s' % exception}
    finally:
        backend.cleanup()
    return result


# The report

def fmt(value, digits=2):
    if value is None:
        return '-'
    if isinstance(value, float):
        return '%.*f' % (digits, value)
    return str(value)


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows))
        for i, h in enumerate(headers)]
    lines = ['  '.join(str(h).rjust(w) for h, w in zip(headers, widths))]
    lines.append('  '.join('-' * w for w in widths))
    for row in rows:
        lines.append('  '.join(str(c).rjust(w) for c, w in zip(row, widths)))
    return '\n'.join(lines)


def report(result):
    "Return the table and the target lines of one backend as text"
    name = result['backend']
    if result.get('skipped'):
        return '== %s: skipped (%s)\n' % (name, result['skipped']), []
    out = ['== %s' % name]
    rows = []
    for size, floor_ in sorted(result['floor'].items(), key=lambda i: int(
                i[0])):
        rows.append(['floor', size, fmt(floor_['seconds'], 3), 0,
                floor_['emails'], fmt(floor_['peak_rss_mb'], 1),
                fmt(floor_['ms_per_email'], 3) + ' ms/e-mail'])
    everything = list(result['module'].items()) + list(
        result['enrol_only'].items())
    for size, module_ in sorted(everything, key=lambda i: int(i[0])):
        for step_name, step in module_['steps'].items():
            if step_name == 'enrol':
                unit = '%s ms/record, %s stmt/batch' % (
                    fmt(step['ms_per_record'], 4),
                    fmt(step['statements_per_batch']))
            elif step_name in {'send', 'process2'}:
                unit = '%s ms/e-mail, %s stmt/e-mail' % (
                    fmt(step['ms_per_email'], 3),
                    fmt(step['statements_per_email']))
            elif step_name == 'open_bulk':
                unit = '%s ms/open, %s stmt/open (rolled back)' % (
                    fmt(step['ms_per_event'], 3),
                    fmt(step['statements_per_event']))
            else:
                unit = ('%s ms/open, %s stmt/open (max %s), p99 %s ms, '
                    'click %s stmt') % (
                    fmt(step['ms_per_event'], 3),
                    fmt(step['statements_per_event']),
                    step['statements_max'], fmt(step['latency_p99_ms']),
                    step['click_statements'])
            rows.append([step_name, size, fmt(step['seconds'], 3),
                    step['statements'], step['emails'],
                    fmt(step['peak_rss_mb'], 1), unit])
        if module_.get('insert_select'):
            rows.append(['insert_select', size,
                    fmt(module_['insert_select']['seconds'], 3), 2, 0, '-',
                    'plain INSERT ... SELECT of the enrolment rows'])
    out.append(table(rows, [
                'step', 'N', 'wall s', 'SQL', 'e-mails', 'peak MB',
                'per unit']))
    if result.get('wrk') and not result['wrk'].get('skipped'):
        out.append('')
        out.append('wrk: %s s, %s connections, %s threads, rotation over %s '
            'recipients' % (result['wrk']['duration_s'],
                result['wrk']['connections'], result['wrk']['threads'],
                result['wrk']['recipients']))
        rows = []
        baseline = result['wrk'].get('rpc_baseline', {}).get('rps')
        for run in ['rpc_baseline', 'open_one', 'open_rotate', 'click_one',
                'click_rotate']:
            figures = result['wrk'].get(run, {})
            if 'rps' not in figures:
                rows.append([run, '-', '-', '-', '-'])
                continue
            share = ('%.0f%%' % (100 * figures['rps'] / baseline)
                if baseline else '-')
            rows.append([run, fmt(figures['rps'], 1),
                    fmt(figures['p99_ms']), figures['errors'], share])
        out.append(table(rows, [
                    'run', 'req/s', 'p99 ms', 'errors', 'of baseline']))
    elif result.get('wrk'):
        out.append('wrk: skipped (%s)' % result['wrk']['skipped'])
    return '\n'.join(out) + '\n', targets(result)


def targets(result):
    "Return the (PASS|FAIL|N/A, description) lines of the issue's targets"
    lines = []
    name = result['backend']

    def check(ok, text):
        lines.append(('N/A' if ok is None else 'PASS' if ok else 'FAIL',
                '[%s] %s' % (name, text)))

    modules = {int(k): v for k, v in result['module'].items()}
    floors = {int(k): v for k, v in result['floor'].items()}
    enrols = {int(k): dict(v['steps']['enrol'], batch_size=v['batch_size'])
        for k, v in list(result['module'].items())
        + list(result['enrol_only'].items())}

    if modules:
        size = 10000 if 10000 in modules else max(modules)
        send = modules[size]['steps']['send']
        ratio = send['ms_per_email'] / floors[size]['ms_per_email']
        check(ratio <= 2.5, 'sending at N=%s: %.2f x the floor per e-mail '
            '(%.3f vs %.3f ms), target <= 2.5x' % (
                size, ratio, send['ms_per_email'],
                floors[size]['ms_per_email']))
        for size in sorted(modules):
            send = modules[size]['steps']['send']
            check(send['statements_per_email'] <= 3,
                'sending at N=%s: %.2f SQL statements per e-mail, '
                'target <= 3' % (size, send['statements_per_email']))
            route = modules[size]['steps']['open_route']
            worst = max(route['statements_max'], route['click_statements'])
            check(worst <= 8,
                'route at N=%s: %s statements per open (max), %s per '
                'click, target <= 8' % (size, route['statements_max'],
                    route['click_statements']))
    if len(enrols) >= 2:
        small, large = min(enrols), max(enrols)
        # The statements that each added batch costs, between successive
        # sizes: the fixed statements of trigger cancel out
        ordered = sorted(enrols)
        slopes = []
        for a, b in zip(ordered, ordered[1:]):
            batches = (math.ceil(b / enrols[b]['batch_size'])
                - math.ceil(a / enrols[a]['batch_size']))
            if batches:
                slopes.append(round(
                    (enrols[b]['statements'] - enrols[a]['statements'])
                    / batches, 2))
        per_record = enrols[large]['statements'] / large
        check(bool(slopes) and max(slopes) <= 1.1 * min(slopes) + 0.5
            and per_record < 0.1,
            'enrolment: %s statements per added batch between N=%s, '
            '%.4f per record at N=%s, target constant per batch' % (
                slopes, ordered, per_record, large))
        ratio = (enrols[large]['ms_per_record']
            / enrols[small]['ms_per_record'])
        check(ratio <= 1.3, 'enrolment: %.2f x the time per record at N=%s '
            'vs N=%s, target linear (<= 1.3x)' % (ratio, large, small))
        growth = [
            enrols[s]['peak_rss_mb'] - (enrols[s]['rss_start_mb'] or 0)
            for s in (small, large)]
        check(growth[1] <= max(2 * growth[0], growth[0] + 10),
            'enrolment: peak RSS growth %.1f MB at N=%s vs %.1f MB at '
            'N=%s, target flat' % (growth[1], large, growth[0], small))
    all_modules = {int(k): v for k, v in list(result['module'].items())
        + list(result['enrol_only'].items())}
    if name == 'postgresql':
        measured = [s for s in all_modules
            if s >= 100000 and all_modules[s].get('insert_select')]
        if measured:
            size = max(measured)
            trigger = all_modules[size]['steps']['enrol']['seconds']
            plain = all_modules[size]['insert_select']['seconds']
            check(trigger <= 10 * plain,
                'enrolment at N=%s: trigger %.2f s is %.1f x a plain '
                'INSERT ... SELECT (%.2f s), target < 10x' % (
                    size, trigger, trigger / plain, plain))
        else:
            check(None, 'enrolment vs INSERT ... SELECT: N=100,000 not '
                'measured')
    if 1000 in modules and 100000 in modules:
        small = modules[1000]['steps']['send']['ms_per_email']
        large = modules[100000]['steps']['send']['ms_per_email']
        check(large <= 1.3 * small, 'scaling: %.3f ms per e-mail at '
            'N=100,000 vs %.3f at N=1,000, target <= 1.3x' % (large, small))
    else:
        check(None, 'scaling of sending 1,000 -> 100,000: not measured '
            '(add 100000 to --sizes)')
    if result.get('wrk') and 'rpc_baseline' in result['wrk']:
        baseline = result['wrk']['rpc_baseline'].get('rps')
        for run in ['open_one', 'open_rotate', 'click_one', 'click_rotate']:
            figures = result['wrk'].get(run, {})
            if not baseline or 'rps' not in figures:
                check(False, 'wrk %s: no figures' % run)
                continue
            share = figures['rps'] / baseline
            check(share >= 0.25 and figures['errors'] == 0,
                'wrk %s: %.0f req/s, %.0f%% of the baseline, p99 %.1f ms, '
                '%s errors, target >= 25%% and no error' % (
                    run, figures['rps'], 100 * share, figures['p99_ms'],
                    figures['errors']))
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--backend', default='sqlite,postgresql',
        help="comma-separated backends (default: %(default)s)")
    parser.add_argument('--sizes', type=sizes, default=[1000, 10000],
        help="sizes with every step (default: 1000,10000)")
    parser.add_argument('--enrol-sizes', type=sizes, default=[100000],
        help="extra sizes with the enrolment only (default: 100000)")
    parser.add_argument('--no-wrk', action='store_true',
        help="skip the route throughput with wrk")
    parser.add_argument('--wrk-duration', type=int, default=30)
    parser.add_argument('--wrk-connections', type=int, default=8)
    parser.add_argument('--wrk-threads', type=int, default=2)
    parser.add_argument('--wrk-recipients', type=int, default=1000)
    parser.add_argument('--route-opens', type=int, default=None,
        help="at most this many opens through the route per size "
        "(default: N/2)")
    parser.add_argument('--profile', action='append',
        choices=['enrol', 'send', 'open_bulk', 'open_route', 'process2',
            'all'],
        help="profile a step with pyinstrument (repeatable)")
    parser.add_argument('--profile-dir', default=os.path.join(
            RESULTS, 'profiles'))
    parser.add_argument('--output', default=RESULTS)
    options = parser.parse_args()
    if options.profile:
        os.makedirs(options.profile_dir, exist_ok=True)

    started = dt.datetime.now()
    directory = tempfile.mkdtemp(prefix='ma-bench-')
    sink = SMTPSink(directory)
    results = []
    try:
        for name in options.backend.split(','):
            name = name.strip()
            results.append(bench_backend(name, sink, options, directory))
    finally:
        sink.stop()
        shutil.rmtree(directory, ignore_errors=True)

    machine = {
        'python': platform.python_version(),
        'platform': platform.platform(),
        'cpus': os.cpu_count(),
        }
    all_targets = []
    os.makedirs(options.output, exist_ok=True)
    stamp = started.strftime('%Y%m%d-%H%M%S')
    for result in results:
        text, lines = report(result)
        print(text)
        all_targets.extend(lines)
        result['targets'] = [
            {'status': s, 'target': t} for s, t in lines]
        result['started'] = started.isoformat()
        result['machine'] = machine
        result['options'] = {
            'sizes': options.sizes, 'enrol_sizes': options.enrol_sizes,
            'wrk': not options.no_wrk}
        with open(os.path.join(options.output, '%s-%s.json' % (
                        stamp, result['backend'])), 'w') as fp:
            json.dump(result, fp, indent=1, sort_keys=True)
    print('Targets')
    for status, text in all_targets:
        print('%-4s %s' % (status, text))
    with open(os.path.join(options.output, 'latest.json'), 'w') as fp:
        json.dump({
                'started': started.isoformat(),
                'machine': machine,
                'results': results,
                }, fp, indent=1, sort_keys=True)
    print('\nResults in %s' % os.path.relpath(options.output, ROOT))


if __name__ == '__main__':
    main()
