# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The module at one size, in a fresh process and a fresh database

N parties with an e-mail address, one running scenario, and the steps:
enrolment, first processing run, N/2 opens (in bulk and through the
route) and second processing run."""
import argparse
import datetime as dt
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    TEMPLATE, TITLE, USER_AGENT, SMTPCount, StatementCounter, Step, emit)

PARTY_BATCH = 1000


def setup(database, size):
    "Create the parties fast with bulk inserts, and the running scenario"
    from sql import Literal
    from sql.operators import Concat

    from trytond.pool import Pool
    from trytond.transaction import Transaction

    pool = Pool()
    Party = pool.get('party.party')
    ContactMechanism = pool.get('party.contact_mechanism')
    Scenario = pool.get('marketing.automation.scenario')
    party = Party.__table__()
    mechanism = ContactMechanism.__table__()
    cursor = Transaction().connection.cursor()
    now = dt.datetime.now()

    for start in range(0, size, PARTY_BATCH):
        rows = []
        for i in range(start, min(start + PARTY_BATCH, size)):
            code = 'B%07d' % i
            rows.append([True, code, code, i, 'Party %07d' % i, 0, now])
        cursor.execute(*party.insert(
                [party.active, party.code, party.code_alnum,
                    party.code_digit, party.name, party.create_uid,
                    party.create_date],
                rows))
    email = Concat(Concat('p', party.code), '@example.com')
    cursor.execute(*mechanism.insert(
            [mechanism.party, mechanism.type, mechanism.value,
                mechanism.value_compact, mechanism.active,
                mechanism.sequence, mechanism.create_uid,
                mechanism.create_date],
            party.select(
                party.id, Literal('email'), email, email, Literal(True),
                Literal(10), Literal(0), Literal(now))))

    def email_activity(name, **values):
        values.update({
                'name': name,
                'action': 'send_email',
                'email_title': TITLE,
                'email_template': TEMPLATE,
                })
        return values

    scenario, = Scenario.create([{
                'name': 'Benchmark',
                'model': 'party.party',
                'domain': '[]',
                'activities': [('create', [email_activity(
                                'News',
                                children=[('create', [
                                            email_activity(
                                                'Opened',
                                                on='email_opened'),
                                            email_activity(
                                                'Not clicked after 2 days',
                                                on='email_clicked_not',
                                                delay=dt.timedelta(days=2)),
                                            email_activity('Reminder'),
                                            ])])])],
                }])
    Scenario.run([scenario])
    root, = scenario.activities
    return scenario.id, root.id


def insert_select(backend, root_id):
    """Time a plain INSERT … SELECT of the rows that enrolment creates, into
    scratch tables shaped like marketing_automation_record and its record
    activities"""
    from trytond.transaction import Transaction
    cursor = Transaction().connection.cursor()
    tables = {
        'marketing_automation_record': 'bench_scratch_record',
        'marketing_automation_record_activity': 'bench_scratch_ra',
        }
    if backend == 'postgresql':
        for source, scratch in tables.items():
            cursor.execute('CREATE TABLE %s (LIKE %s INCLUDING ALL)' % (
                    scratch, source))
        uuid = "md5(random()::text || id::text)"
        false, now = 'false', 'now()'
    else:
        for source, scratch in tables.items():
            cursor.execute(
                "SELECT type, sql FROM sqlite_master "
                "WHERE tbl_name = ? AND sql IS NOT NULL "
                "ORDER BY type = 'index'", (source,))
            for kind, sql in cursor.fetchall():
                sql = sql.replace(source, scratch)
                if kind == 'index':
                    sql = sql.replace('INDEX "', 'INDEX "bench_', 1)
                    sql = sql.replace('INDEX ', 'INDEX bench_', 1) if (
                        'INDEX "bench_' not in sql) else sql
                cursor.execute(sql)
        uuid = "lower(hex(randomblob(16)))"
        false, now = '0', 'CURRENT_TIMESTAMP'
    Transaction().commit()
    t0 = time.perf_counter()
    cursor.execute(
        "INSERT INTO bench_scratch_record "
        "(scenario, record, blocked, uuid, create_uid, create_date) "
        "SELECT 1, 'party.party,' || id, %s, %s, 0, %s FROM party_party"
        % (false, uuid, now))
    t1 = time.perf_counter()
    cursor.execute(
        "INSERT INTO bench_scratch_ra "
        "(record, activity, at, state, email_opened, email_clicked, "
        "email_opened_machine, email_filtered, create_uid, create_date) "
        "SELECT id, %s, %s, 'waiting', %s, %s, %s, %s, 0, %s "
        "FROM bench_scratch_record"
        % (int(root_id), now, false, false, false, false, now))
    Transaction().commit()
    t2 = time.perf_counter()
    for scratch in tables.values():
        cursor.execute('DROP TABLE %s' % scratch)
    Transaction().commit()
    return {
        'seconds': round(t2 - t0, 4),
        'records_seconds': round(t1 - t0, 4),
        }


def opens(database, root_id):
    "Return the token and the record activity of every other e-mail"
    from trytond.pool import Pool
    from trytond.transaction import Transaction
    pool = Pool()
    Email = pool.get('ir.email')
    RecordActivity = pool.get('marketing.automation.record.activity')
    email = Email.__table__()
    record_activity = RecordActivity.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*email.join(record_activity, condition=(
                record_activity.activity
                == email.marketing_automation_activity)
            & (record_activity.record == email.marketing_automation_record)
            ).select(
            email.marketing_automation_token, record_activity.id,
            where=email.marketing_automation_activity == root_id,
            order_by=[email.id.asc]))
    return cursor.fetchall()[::2]


def write_paths(database, root_id, path):
    "Write the open image and click paths of the e-mails of root_id"
    import json

    from trytond.pool import Pool
    from trytond.transaction import Transaction
    pool = Pool(database)
    Email = pool.get('ir.email')
    email = Email.__table__()
    with Transaction().start(database, 0, readonly=True):
        cursor = Transaction().connection.cursor()
        cursor.execute(*email.select(
                email.marketing_automation_token,
                email.marketing_automation_links,
                where=email.marketing_automation_activity == root_id,
                order_by=[email.id.asc]))
        rows = cursor.fetchall()
    with open(path + '.open', 'w') as fp_open, \
            open(path + '.click', 'w') as fp_click:
        for token, links in rows:
            key = sorted(json.loads(links))[0]
            fp_open.write('/m/%s/o/%s.gif\n' % (database, token))
            fp_click.write('/m/%s/c/%s/%s\n' % (database, token, key))


def opened(root_id):
    "Count the opened e-mails of root_id"
    from trytond.pool import Pool
    from trytond.transaction import Transaction
    RecordActivity = Pool().get('marketing.automation.record.activity')
    table = RecordActivity.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.select(table.id,
            where=(table.activity == root_id) & table.email_opened))
    return len(cursor.fetchall())


def states(root_id):
    "Count the record activities by activity and state, to check the run"
    from sql.aggregate import Count

    from trytond.pool import Pool
    from trytond.transaction import Transaction
    pool = Pool()
    RecordActivity = pool.get('marketing.automation.record.activity')
    Activity = pool.get('marketing.automation.activity')
    table = RecordActivity.__table__()
    activity = Activity.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.join(activity,
            condition=table.activity == activity.id).select(
            activity.name, table.state, Count(table.id),
            group_by=[activity.name, table.state]))
    result = {}
    for name, state, count in cursor:
        result.setdefault(name, {})[state] = count
    return result


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    index = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    return values[index]


class Profiler:
    "Profile the named steps with pyinstrument when asked"

    def __init__(self, names, directory, tag):
        self.names = set(names or [])
        self.directory = directory
        self.tag = tag

    def __call__(self, name):
        profiler = self

        class Context:
            def __enter__(self):
                self.profiler = None
                if name in profiler.names or 'all' in profiler.names:
                    from pyinstrument import Profiler
                    self.profiler = Profiler(interval=0.0005)
                    self.profiler.start()

            def __exit__(self, *exc):
                if self.profiler:
                    self.profiler.stop()
                    base = os.path.join(profiler.directory, '%s-%s' % (
                            profiler.tag, name))
                    with open(base + '.txt', 'w') as fp:
                        fp.write(self.profiler.output_text(
                                unicode=False, color=False,
                                show_all=False))
                    with open(base + '.html', 'w') as fp:
                        fp.write(self.profiler.output_html())
                return False
        return Context()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--config', required=True)
    parser.add_argument('--database', required=True)
    parser.add_argument('--backend', required=True)
    parser.add_argument('--size', type=int, required=True)
    parser.add_argument('--enrol-only', action='store_true')
    parser.add_argument('--insert-select', action='store_true')
    parser.add_argument('--count-file', required=True)
    parser.add_argument('--profile', action='append')
    parser.add_argument('--profile-dir', default='.')
    parser.add_argument('--wrk-paths',
        help="only enrol and send, then write the open and click paths of "
        "the e-mails in WRK_PATHS.open and WRK_PATHS.click")
    parser.add_argument('--route-opens', type=int, default=None,
        help="at most this many opens through the route (default N/2)")
    options = parser.parse_args()

    from trytond import config
    config.update_etc(options.config)
    StatementCounter.install()

    from werkzeug.test import Client

    from trytond.modules.marketing_automation.marketing_automation import (
        batch_size)
    from trytond.pool import Pool
    from trytond.transaction import Transaction
    from trytond.wsgi import app

    database, size = options.database, options.size
    smtp_count = SMTPCount(options.count_file)
    profile = Profiler(options.profile, options.profile_dir,
        '%s-%s' % (options.backend, size))
    Pool.start()
    with Transaction().start(database, 0, readonly=True):
        Pool(database).init()
    pool = Pool(database)
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')

    t0 = time.perf_counter()
    with Transaction().start(database, 0) as transaction:
        scenario_id, root_id = setup(database, size)
        transaction.commit()
    result = {
        'size': size,
        'backend': options.backend,
        'batch_size': batch_size(),
        'setup_seconds': round(time.perf_counter() - t0, 2),
        'steps': {},
        }
    steps = result['steps']

    # (1) Enrolment
    with profile('enrol'), Step('enrol', smtp_count) as step:
        with Transaction().start(database, 0) as transaction:
            Scenario.trigger()
            transaction.commit()
    batches = math.ceil(size / batch_size())
    steps['enrol'] = step.result(
        records=size,
        statements_per_batch=round(step.statements / batches, 2),
        ms_per_record=round(1000 * step.seconds / size, 4))

    if options.enrol_only:
        if options.insert_select:
            with Transaction().start(database, 0):
                result['insert_select'] = insert_select(
                    options.backend, root_id)
        emit(result)
        return

    # (2) First processing run: it sends N e-mails
    with profile('send'), Step('send', smtp_count) as step:
        with Transaction().start(database, 0) as transaction:
            RecordActivity.process()
            transaction.commit()
    steps['send'] = step.result(
        ms_per_email=round(1000 * step.seconds / max(step.emails, 1), 4),
        statements_per_email=round(
            step.statements / max(step.emails, 1), 3))

    if options.wrk_paths:
        write_paths(database, root_id, options.wrk_paths)
        emit(result)
        return

    with Transaction().start(database, 0, readonly=True):
        events = opens(database, root_id)

    # (3b) N/2 opens in bulk, rolled back to replay them through the route
    with Transaction().start(database, 0) as transaction:
        with profile('open_bulk'), Step('open_bulk', smtp_count) as step:
            ids = [i for _, i in events]
            for start in range(0, len(ids), batch_size()):
                RecordActivity.on_email_opened(
                    RecordActivity.browse(ids[start:start + batch_size()]))
        transaction.rollback()
    with Transaction().start(database, 0, readonly=True):
        # The opens are replayed through the route: none may be left
        left = opened(root_id)
    steps['open_bulk'] = step.result(
        opened_after_rollback=left,
        events=len(ids),
        ms_per_event=round(1000 * step.seconds / max(len(ids), 1), 4),
        statements_per_event=round(step.statements / max(len(ids), 1), 3),
        committed=False)

    # (3a) N/2 opens through the route, one request at a time
    client = Client(app)
    route_events = events
    if options.route_opens is not None:
        route_events = events[:options.route_opens]
    latencies, statements, failures = [], [], 0
    with profile('open_route'), Step('open_route', smtp_count) as step:
        trace = os.environ.get('BENCH_TRACE_SQL') == 'route'
        for index, (token, _) in enumerate(route_events):
            if trace:
                StatementCounter.trace = index < 2
                if index < 2:
                    print('[sql] --- open %s' % index, file=sys.stderr)
            s0, r0 = StatementCounter.count, time.perf_counter()
            response = client.get(
                '/m/%s/o/%s.gif' % (database, token),
                headers={'User-Agent': USER_AGENT})
            latencies.append(time.perf_counter() - r0)
            statements.append(StatementCounter.count - s0)
            if response.status_code != 200:
                failures += 1
            response.close()
    # One click through the route, for its statements
    with Transaction().start(database, 0, readonly=True):
        Email = pool.get('ir.email')
        email, = Email.search([
                ('marketing_automation_token', '=', route_events[-1][0]),
                ])
        import json
        key = sorted(json.loads(email.marketing_automation_links))[0]
    if trace:
        StatementCounter.trace = True
        print('[sql] --- click', file=sys.stderr)
    s0 = StatementCounter.count
    response = client.get(
        '/m/%s/c/%s/%s' % (database, route_events[-1][0], key),
        headers={'User-Agent': USER_AGENT})
    click_statements = StatementCounter.count - s0
    StatementCounter.trace = False
    click_status = response.status_code
    response.close()
    n = max(len(route_events), 1)
    steps['open_route'] = step.result(
        events=len(route_events),
        failures=failures,
        ms_per_event=round(1000 * step.seconds / n, 4),
        statements_per_event=round(step.statements / n, 3),
        statements_max=max(statements or [0]),
        latency_p50_ms=round(1000 * percentile(latencies, 50), 3),
        latency_p99_ms=round(1000 * percentile(latencies, 99), 3),
        click_statements=click_statements,
        click_status=click_status)

    # (4) Second processing run: the reminders and the opened children
    with profile('process2'), Step('process2', smtp_count) as step:
        with Transaction().start(database, 0) as transaction:
            RecordActivity.process()
            transaction.commit()
    steps['process2'] = step.result(
        ms_per_email=round(1000 * step.seconds / max(step.emails, 1), 4),
        statements_per_email=round(
            step.statements / max(step.emails, 1), 3))

    with Transaction().start(database, 0, readonly=True):
        result['states'] = states(root_id)
    if options.insert_select:
        # Last: its DDL must not change what the steps see
        with Transaction().start(database, 0):
            result['insert_select'] = insert_select(options.backend, root_id)
    emit(result)


if __name__ == '__main__':
    main()
