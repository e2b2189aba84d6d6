# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""What is measured, in a process of its own for its memory figures

Its argument is the JSON of run.py's options (the mode: floor, module, enrol
or wrk); it prints its figures as one JSON line after '@@result '."""
import contextlib
import datetime as dt
import functools
import json
import math
import os
import re
import resource
import sys
import time
import types

# The same template for the floor and for the module: a name, two links and
# an unsubscribe link
TITLE = 'News for ${record.name}'
TEMPLATE = '''\
<html xmlns:py="http://genshi.edgewall.org/">
<head><title>News</title></head>
<body>
<h1>Hello ${record.name},</h1>
<p>Our new season is here: see <a href="https://shop.example.com/new">the
new collection</a> or visit <a href="https://shop.example.com/stores">our
stores</a>.</p>
<p>Kind regards,<br/>The team</p>
<p><a href="unsubscribe">Unsubscribe</a></p>
</body>
</html>
'''


# The retention step sends a newsletter of a usual size: twelve products in
# a table layout with inline styles, each with an image and a tracked link
NEWSLETTER = TEMPLATE.replace('<p>Kind regards,', (
        '<table width="600" cellpadding="0" cellspacing="0" border="0" '
        'style="font-family:Arial,sans-serif;color:#333333">%s</table>\n'
        '<p>Kind regards,') % ''.join(
        '<tr><td style="padding:16px;border-bottom:1px solid #eeeeee">'
        '<img src="https://shop.example.com/img/product-%(i)s.jpg" '
        'width="120" height="120" alt="Product %(i)s" '
        'style="display:block;border:0"/></td>'
        '<td style="padding:16px;border-bottom:1px solid #eeeeee">'
        '<h2 style="font-size:18px;margin:0 0 8px 0">Product %(i)s of the '
        'season</h2><p style="font-size:14px;line-height:20px;margin:0">'
        'Made to last, in natural materials, with free delivery and '
        'returns within thirty days. Available in five colours and every '
        'size, while stocks last.</p><p style="margin:8px 0 0 0"><a '
        'href="https://shop.example.com/product/%(i)s?utm_source=news" '
        'style="color:#ffffff;background:#0066cc;padding:8px 16px;'
        'text-decoration:none;border-radius:4px">See it</a></p></td></tr>\n'
        % {'i': i} for i in range(12)))


def send_email(name, **values):
    "Return the values of an activity that sends the template"
    return dict(values, name=name, action='send_email', email_title=TITLE,
        email_template=TEMPLATE)


# On every party: the root "News", its children on an open, on no click, always
SCENARIO = {'name': 'Benchmark', 'model': 'party.party', 'domain': '[]',
    'activities': [('create', [send_email('News', children=[('create', [
                send_email('Opened', on='email_opened'),
                send_email('Not clicked after 2 days', on='email_clicked_not',
                    delay=dt.timedelta(days=2)),
                send_email('Reminder')])])])]}


def memory(key):
    "Return the figure key of /proc/self/status in MB"
    with open('/proc/self/status') as file:
        for line in file:
            if line.startswith(key + ':'):
                return round(int(line.split()[1]) / 1024, 1)


class Step:
    """Measure a step: wall and CPU time, SQL statements, emails received by
    the SMTP server of run.py (the size of its count file) and the peak
    resident memory, whose high-water mark is reset before the step"""

    def __init__(self, count_file, counter=None):
        self.count_file, self.counter = count_file, counter

    def now(self):
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (time.perf_counter(), usage.ru_utime + usage.ru_stime,
            self.counter.count if self.counter else 0,
            os.path.getsize(self.count_file))

    def __enter__(self):
        try:
            with open('/proc/self/clear_refs', 'w') as file:
                file.write('5')  # VmHWM back to the current RSS
            reset = True
        except OSError:
            reset = False
        self.figures = {'load_average': round(os.getloadavg()[0], 2),
            'peak_rss_reset': reset, 'rss_start_mb': memory('VmRSS')}
        self.start = self.now()
        return self

    def __exit__(self, *exc):
        self.seconds, cpu, self.statements, self.emails = (
            e - s for e, s in zip(self.now(), self.start))
        self.figures.update(seconds=round(self.seconds, 4),
            cpu_seconds=round(cpu, 4), statements=self.statements,
            emails=self.emails, peak_rss_mb=memory('VmHWM'))

    def ms(self, count):
        return round(1000 * self.seconds / max(count, 1), 4)

    def result(self, unit=None, count=None, **figures):
        "Return the figures, and per unit if given (by default per email)"
        if unit:
            count = self.emails if count is None else count
            figures['ms_per_' + unit] = self.ms(count)
            figures['statements_per_' + unit] = round(
                self.statements / max(count, 1), 3)
        return dict(self.figures, **figures)


def floor(options):
    """Render the template compiled once for each recipient, build the MIME
    message (HTML part, text part made from the HTML with lxml, headers)
    and hand it to the SMTP server over one persistent connection"""
    import smtplib
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import formataddr, formatdate, make_msgid
    from types import SimpleNamespace

    from genshi.template import MarkupTemplate, NewTextTemplate
    from lxml import html

    def text(content):
        document = html.document_fromstring(content)
        for element in document.xpath('//head|//img'):
            element.drop_tree()
        for link in document.iter('a'):
            link.tail = ' <%s>%s' % (link.get('href'), link.tail or '')
        lines = (' '.join(line.split())
            for line in document.text_content().splitlines())
        return '\n'.join(line for line in lines if line) + '\n'

    size = options['size']
    title, template = NewTextTemplate(TITLE), MarkupTemplate(TEMPLATE)
    # As the parties of the module
    recipients = [SimpleNamespace(name='Party %s' % i,
            email='Party-%06d@example.com' % i) for i in range(size)]
    with Step(options['count_file']) as step:
        server = smtplib.SMTP('127.0.0.1', options['smtp_port'])
        for recipient in recipients:
            body = template.generate(record=recipient).render(
                method='html', encoding=None)
            message = EmailMessage()
            message['From'] = options['email_from']
            message['To'] = formataddr((recipient.name, recipient.email))
            message['Subject'] = title.generate(record=recipient).render(
                encoding=None)
            message['Date'] = formatdate(localtime=True)
            message['Message-ID'] = make_msgid(domain='example.com')
            message.set_content(text(body), subtype='plain')
            message.add_alternative(body, subtype='html')
            server.sendmail(options['email_from'], [recipient.email],
                message.as_bytes(policy=SMTP))
        server.quit()
        # The server counts at the end of each SMTP transaction
        deadline = time.time() + 10
        while (os.path.getsize(options['count_file']) - step.start[3] < size
                and time.time() < deadline):
            time.sleep(0.001)
    return step.result(size=size, ms_per_email=step.ms(size))


def insert_select(backend, root):
    """Time a plain INSERT … SELECT of the rows of enrolment into scratch
    tables shaped like the records and record activities"""
    from trytond.transaction import Transaction
    transaction = Transaction()
    cursor = transaction.connection.cursor()
    tables = {'marketing_automation_record': 'bench_scratch_record',
        'marketing_automation_record_activity': 'bench_scratch_ra'}
    for source, scratch in tables.items():
        if backend == 'postgresql':
            cursor.execute('CREATE TABLE %s (LIKE %s INCLUDING ALL)' % (
                    scratch, source))
            continue
        cursor.execute("SELECT sql FROM sqlite_master WHERE tbl_name = ? "
            "AND sql IS NOT NULL ORDER BY type = 'index'", (source,))
        for sql, in cursor.fetchall():
            cursor.execute(re.sub(r'INDEX "?', r'\g<0>bench_', sql.replace(
                        source, scratch), count=1))
    uuid, false, now = {
        'postgresql': ("md5(random()::text || id::text)", 'false', 'now()'),
        'sqlite': ("lower(hex(randomblob(16)))", '0', 'CURRENT_TIMESTAMP'),
        }[backend]
    transaction.commit()
    t0 = time.perf_counter()
    cursor.execute("INSERT INTO bench_scratch_record "
        "(scenario, record, blocked, uuid, create_uid, create_date) "
        "SELECT 1, 'party.party,' || id, %s, %s, 0, %s FROM party_party"
        % (false, uuid, now))
    t1 = time.perf_counter()
    cursor.execute("INSERT INTO bench_scratch_ra "
        "(record, activity, at, state, email_opened, email_clicked, "
        "email_opened_machine, email_filtered, create_uid, create_date) "
        "SELECT id, %s, %s, 'waiting', %s, 0, %s FROM bench_scratch_record"
        % (int(root), now, ', '.join([false] * 4), now))
    transaction.commit()
    t2 = time.perf_counter()
    for scratch in tables.values():
        cursor.execute('DROP TABLE %s' % scratch)
    transaction.commit()
    return {'seconds': round(t2 - t0, 4), 'records_seconds': round(t1 - t0, 4)}


@contextlib.contextmanager
def profiled(method):
    """Profile the block with cProfile when MA_BENCH_PROFILE names method,
    into MA_BENCH_PROFILE_DIR (a profile changes the times it reports)"""
    if os.environ.get('MA_BENCH_PROFILE') != method.__name__:
        yield
        return
    import cProfile
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        directory = os.environ.get('MA_BENCH_PROFILE_DIR', '.')
        profile.dump_stats(os.path.join(directory, '%s-%s-%s.prof' % (
                    method.__name__, os.getpid(), time.time_ns())))


def module(options):
    "The steps of the module at one size, on a fresh database"
    from trytond import config
    config.update_etc(options['config'])  # before the imports that read it
    from trytond.modules.marketing_automation.tests import tools
    from trytond.pool import Pool
    from trytond.transaction import Transaction

    database, size, mode = (options[k] for k in ['database', 'size', 'mode'])
    batch = config.getint('marketing', 'automation_batch_size')

    def transaction(readonly=False):
        return Transaction().start(database, 0, readonly=readonly)
    Pool.start()
    pool = Pool(database)
    with transaction(readonly=True):
        pool.init()
        # It patches the cursor classes: it counts until the process ends
        counter = tools.StatementCounter(keep=False).__enter__()
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')
    link = re.compile(re.escape(tools.AUTOMATION_BASE)
        + r'(/m/%s/([oc])/[^"]+)' % re.escape(database))
    step = functools.partial(Step, options['count_file'], counter)

    def tracked(every=1):
        """Return the record activity, the open path and a click path of the
        emails of root, one in every, in the order they were composed"""
        with transaction(readonly=True):
            emails = pool.get('ir.email').search_read(
                [('marketing_automation_activity', '=', root)],
                order=[('id', 'ASC')],
                fields_names=['marketing_automation_record_activity', 'body'])
        result = []
        for email in emails[::every]:
            paths = {kind: p for p, kind in link.findall(email['body'])}
            result.append((email['marketing_automation_record_activity'],
                    paths['o'], paths['c']))
        return result

    def committed(method):
        "Measure method and its commit as a step"
        with step() as measured, transaction() as t, profiled(method):
            method()
            t.commit()
        return measured

    # The parties and the running scenario, not measured but their time
    started = time.perf_counter()
    with transaction() as t:
        tools.create_parties('Party', size)
        scenario, = Scenario.create([SCENARIO])
        Scenario.run([scenario])
        root, = (a.id for a in scenario.activities)
        t.commit()
    result = {'size': size, 'backend': options['backend'], 'batch_size': batch,
        'setup_seconds': round(time.perf_counter() - started, 2), 'steps': {}}
    steps = result['steps']
    enrol = committed(Scenario.trigger)
    steps['enrol'] = enrol.result(records=size, ms_per_record=enrol.ms(size),
        statements_per_batch=round(
            enrol.statements / math.ceil(size / batch), 2))
    # The hourly run again, with nothing new to enrol: it must draw no id
    # and cost the same few statements whatever the size
    again = committed(Scenario.trigger)
    steps['enrol_again'] = again.result(records=size)
    if mode == 'enrol':
        with transaction():
            result['insert_select'] = insert_select(options['backend'], root)
        return result

    def analyze():
        """Analyze the tables, as autovacuum would have done on tables that
        grew this much: the planner of a never analysed table chooses by
        defaults, which for a lookup of tokens is a scan of the table"""
        if options['backend'] == 'postgresql':
            with transaction() as t:
                t.connection.cursor().execute('ANALYZE')
                t.commit()

    # The first processing run sends the root emails
    steps['send'] = committed(RecordActivity.process).result('email')
    if mode == 'wrk':
        # The last email is for the repeats, the others for run.py's wrk
        *paths, (_, open_path, click_path) = tracked()
        for index, kind in [(1, '.open'), (2, '.click')]:
            with open(options['paths'] + kind, 'w') as file:
                file.writelines(p[index] + '\n' for p in paths)
        result['repeat'] = repeat_is_read(database, open_path, click_path)
        analyze()
        return result
    analyze()
    # Every other email is opened, in bulk first, rolled back to replay
    # the same opens through the route
    events = tracked(every=2)
    ids = [i for i, _, _ in events]
    with transaction() as t:
        with step() as bulk:
            for start in range(0, len(ids), batch):
                RecordActivity.on_email_opened(
                    RecordActivity.browse(ids[start:start + batch]))
        t.rollback()
    with transaction(readonly=True):
        left = RecordActivity.search_count([
                ('activity', '=', root), ('email_opened', '=', True)])
    steps['open_bulk'] = bulk.result('event', len(ids),
        opened_after_rollback=left, events=len(ids), committed=False)

    def get(path):
        "Return the status, the statements and the seconds of a request"
        statements, start = counter.count, time.perf_counter()
        status = tools.follow(path).status_code
        return status, counter.count - statements, time.perf_counter() - start
    events = events[:options['route_opens']]  # all of them if None
    with step() as route:
        statuses, counts, latencies = zip(*(get(o) for _, o, _ in events))
    click_status, click_statements, _ = get(events[-1][2])
    # The nearest-rank percentiles
    latencies = sorted(latencies)
    p50, p99 = (round(1000 * latencies[
                max(0, math.ceil(p / 100 * len(latencies)) - 1)], 3)
        for p in [50, 99])
    steps['open_route'] = route.result('event', len(events),
        events=len(events), failures=sum(s != 200 for s in statuses),
        statements_max=max(counts), latency_p50_ms=p50, latency_p99_ms=p99,
        click_statements=click_statements, click_status=click_status)
    # The second one sends the reminders and the opened children
    steps['process2'] = committed(RecordActivity.process).result('email')
    # The record activities by activity and state, to check the run
    states = result['states'] = {}
    with transaction(readonly=True):
        for activity in pool.get('marketing.automation.activity').search([]):
            for state, _ in RecordActivity.state.selection:
                count = RecordActivity.search_count([
                        ('activity', '=', activity.id), ('state', '=', state)])
                if count:
                    states.setdefault(activity.name, {})[state] = count
    # Last: its DDL must not change what the steps see
    with transaction():
        result['insert_select'] = insert_select(options['backend'], root)
    return result


WRITING = re.compile(r'\s*(INSERT|UPDATE|DELETE)\b', re.IGNORECASE)


def repeat_is_read(database, *paths):
    """Return the statements and the transactions of a repeat of the open
    and of the click of paths, on trytond's WSGI application in this
    process: first as a process that does not remember them, then as one
    that does"""
    from unittest.mock import patch

    from trytond.modules.marketing_automation import routes
    from trytond.modules.marketing_automation.tests import tools
    from trytond.transaction import Transaction

    for path in paths:
        assert tools.follow(path).status_code in {200, 302}, path
    result, start = {}, Transaction.start

    def started(transaction, database_name, user, readonly=False, *args,
            **kwargs):
        if database_name == database:
            transactions.append(readonly)
        return start(transaction, database_name, user, readonly, *args,
            **kwargs)
    for process in ['cold', 'warm']:
        if process == 'cold':
            routes._remembered.clear()
        transactions = []
        with Transaction().start(database, 0, readonly=True):
            counter = tools.StatementCounter().__enter__()
        with patch.object(Transaction, 'start', started):
            statuses = [tools.follow(p).status_code for p in paths]
        counter.__exit__(None, None, None)
        result[process] = {'statuses': statuses,
            'statements': counter.count,
            'writes': sum(bool(WRITING.match(s)) for s in counter.statements),
            'transactions': len(transactions),
            'write_transactions': transactions.count(False)}
    return result


# The reports read by day over the month before today
REPORT_DAYS = 30
# The fields that the list views of the reports show, with the names of
# their Many2One, as the client reads them
REPORT_FIELDS = {
    'marketing.automation.reporting.scenario': ['date', 'scenario',
        'scenario.rec_name', 'record_count', 'failed_count',
        'record_count_blocked', 'block_rate', 'email_bounced',
        'email_complained', 'record_count_converted', 'conversion_rate'],
    'marketing.automation.reporting.activity': ['date', 'scenario',
        'scenario.rec_name', 'activity', 'activity.rec_name',
        'activity_action', 'record_count', 'failed_count', 'email_opened',
        'email_clicked', 'email_open_rate', 'email_click_rate',
        'email_click_through_rate', 'email_opened_machine',
        'email_filtered', 'email_bounced', 'email_complained'],
    }
# The statistics of the forms: the figures and their trends
FORM_FIELDS = {
    'marketing.automation.scenario': ['record_count', 'failed_count',
        'record_count_blocked', 'block_rate', 'block_rate_trend',
        'email_bounced', 'email_complained', 'record_count_converted',
        'conversion_rate', 'conversion_rate_trend'],
    'marketing.automation.activity': ['record_count', 'failed_count',
        'email_opened', 'email_open_rate', 'email_clicked',
        'email_click_rate', 'email_click_through_rate',
        'email_open_rate_trend', 'email_click_rate_trend',
        'email_click_through_rate_trend', 'email_opened_machine',
        'email_filtered', 'email_bounced', 'email_complained'],
    }
# The rows of the month, from pseudo-random draws u1 and u2 in [0, 10000)
# of each record: the shares of the flags, in 1/10,000
REPORT_ROWS = '''
CREATE TEMPORARY TABLE bench_draw AS
SELECT i, abs(hashint4(i)) %% 10000 AS u1, abs(hashint8(i)) %% 10000 AS u2,
    %(start)s::timestamp + (i - 1) * interval '27 days' / %(size)s AS created
FROM generate_series(1, %(size)s) AS i;
INSERT INTO marketing_automation_record (scenario, record, uuid, blocked,
    blocked_date, converted, create_uid, create_date)
SELECT %(scenario)s, 'party.party,' || i, md5('bench-' || i),
    u1 >= 270 AND u1 < 470,
    CASE WHEN u1 >= 270 AND u1 < 470 THEN created + interval '1 day' END,
    CASE WHEN u2 < 500 AND u1 >= 470 THEN created + interval '2 days' END,
    0, created
FROM bench_draw ORDER BY i;
CREATE TEMPORARY TABLE bench_record AS
SELECT r.id, d.* FROM marketing_automation_record AS r
JOIN bench_draw AS d ON r.record = 'party.party,' || d.i
WHERE r.scenario = %(scenario)s;
-- The root: 1%% failed, 2%% bounced (a quarter of them failed), 0.2%%
-- complaints, 29%% opened, 7.8%% clicked, 5%% opened by machine, 2%% filtered
INSERT INTO marketing_automation_record_activity (record, activity, state,
    at, error, email_opened, email_clicked, email_opened_machine,
    email_filtered, email_bounced, email_complained, create_uid,
    create_date)
SELECT id, %(root)s, CASE WHEN u1 < 100 THEN 'failed' ELSE 'done' END,
    created + interval '10 minutes',
    CASE WHEN u1 < 100 THEN 'Benchmark failure' END,
    u1 >= 250 AND u2 < 3000, u1 >= 250 AND u2 < 800,
    u2 >= 3000 AND u2 < 3500, u2 >= 3500 AND u2 < 3700,
    u1 >= 50 AND u1 < 250, u1 >= 250 AND u1 < 270, 0, created
FROM bench_record ORDER BY id;
-- The children of the opened root emails: "Opened", 40%% of them opened
-- again, and "Not clicked after 2 days", cancelled by a click
INSERT INTO marketing_automation_record_activity (record, activity, state,
    at, email_opened, email_clicked, create_uid, create_date)
SELECT id, %(opened)s, 'done', created + interval '1 day',
    u2 < 1200, u2 < 300, 0, created
FROM bench_record WHERE u1 >= 250 AND u2 < 3000 ORDER BY id;
INSERT INTO marketing_automation_record_activity (record, activity, state,
    at, email_opened, email_clicked, create_uid, create_date)
SELECT id, %(not_clicked)s,
    CASE WHEN u2 < 800 THEN 'cancelled' ELSE 'done' END,
    created + interval '2 days', u2 >= 800 AND u2 < 1000, false, 0, created
FROM bench_record WHERE u1 >= 250 AND u2 < 3000 ORDER BY id;
DROP TABLE bench_draw;
DROP TABLE bench_record
'''


def reports_build(options):
    """Create a running scenario with size records enrolled over the month
    and their record activities, by INSERT … SELECT generate_series, and
    analyze the tables as autovacuum would"""
    import psycopg

    from trytond import config
    config.update_etc(options['config'])
    from trytond.pool import Pool
    from trytond.transaction import Transaction

    database, size = options['database'], options['size']
    Pool.start()
    pool = Pool(database)
    with Transaction().start(database, 0, readonly=True):
        pool.init()
    Scenario = pool.get('marketing.automation.scenario')
    started = time.perf_counter()
    with Transaction().start(database, 0) as transaction:
        scenario, = Scenario.create([SCENARIO])
        Scenario.run([scenario])
        root, = scenario.activities
        names = {a.name: a.id for a in [root, *root.children]}
        cursor = transaction.connection.cursor()
        start = dt.datetime.combine(
            dt.date.today() - dt.timedelta(days=REPORT_DAYS - 1), dt.time())
        values = {'size': size, 'scenario': scenario.id, 'start': start,
            'root': names['News'], 'opened': names['Opened'],
            'not_clicked': names['Not clicked after 2 days']}
        for statement in REPORT_ROWS.split(';'):
            cursor.execute(statement, values)
        transaction.commit()
    inserted = time.perf_counter()
    with psycopg.connect(options['uri'] + database,
            autocommit=True) as connection:
        for table in ['marketing_automation_record',
                'marketing_automation_record_activity']:
            connection.execute('VACUUM ANALYZE %s' % table)
        counts = connection.execute('SELECT (SELECT count(*) FROM '
            'marketing_automation_record), (SELECT count(*) FROM '
            'marketing_automation_record_activity)').fetchone()
    return {'size': size, 'records': counts[0],
        'record_activities': counts[1],
        'insert_seconds': round(inserted - started, 2),
        'analyze_seconds': round(time.perf_counter() - inserted, 2),
        'scenario': scenario.id, 'activity': names['News']}


def reports_read(options):
    """Time, through the ORM and each in a transaction of its own, the
    reports by day over the month (search and read of the fields of their
    list views) and the statistics on the forms (read of their Function
    fields), repeats times each; keep the plans of the slow statements"""
    from trytond import config
    config.update_etc(options['config'])
    from trytond.pool import Pool
    from trytond.transaction import Transaction

    database, repeats = options['database'], options['repeats']
    Pool.start()
    pool = Pool(database)
    with Transaction().start(database, 0, readonly=True):
        pool.init()
    today = dt.date.today()
    month = {'period': 'day', 'to_date': today,
        'from_date': today - dt.timedelta(days=REPORT_DAYS - 1)}
    slow = {}

    def report(name):
        Report = pool.get(name)
        with Transaction().set_context(month):
            records = Report.search([], limit=1000)
            return len(Report.read(
                    [r.id for r in records], REPORT_FIELDS[name]))

    def form(name, id_):
        return len(pool.get(name).read([id_], FORM_FIELDS[name]))
    reads = {
        'scenario_report': functools.partial(
            report, 'marketing.automation.reporting.scenario'),
        'activity_report': functools.partial(
            report, 'marketing.automation.reporting.activity'),
        'scenario_form': functools.partial(
            form, 'marketing.automation.scenario', options['scenario']),
        'activity_form': functools.partial(
            form, 'marketing.automation.activity', options['activity']),
        }
    result = {}
    with _timed_statements(slow, options['slow_ms']) as counter:
        for name, read in reads.items():
            seconds, statements = [], []
            for _ in range(repeats):
                count = counter.count
                with Transaction().start(database, 0, readonly=True):
                    start = time.perf_counter()
                    rows = read()
                    seconds.append(round(time.perf_counter() - start, 4))
                statements.append(counter.count - count)
            result[name] = {'seconds': seconds, 'rows': rows,
                'statements': statements, 'median': sorted(seconds)[
                    len(seconds) // 2], 'load_average': round(
                    os.getloadavg()[0], 2)}
    # The plans of the slow statements, each once
    plans = result['plans'] = []
    with Transaction().start(database, 0, readonly=True) as transaction:
        cursor = transaction.connection.cursor()
        for (query, params), (ms, values) in sorted(
                slow.items(), key=lambda i: -i[1][0]):
            cursor.execute('EXPLAIN (ANALYZE, BUFFERS) ' + query, values)
            plans.append({'ms': ms, 'query': query, 'params': params,
                    'plan': '\n'.join(r for r, in cursor)})
    return result


@contextlib.contextmanager
def _timed_statements(slow, slow_ms):
    """Count the statements of the block and keep in slow the slowest time
    in ms of those slower than slow_ms, by query and parameters"""
    from trytond.backend.postgresql.database import LoggingCursor
    original = LoggingCursor.execute
    counter = types.SimpleNamespace(count=0)

    def execute(cursor, query, params=None, *args, **kwargs):
        counter.count += 1
        start = time.perf_counter()
        try:
            return original(cursor, query, params, *args, **kwargs)
        finally:
            ms = round(1000 * (time.perf_counter() - start), 1)
            if ms >= slow_ms:
                key = (str(query), repr(params))
                slow[key] = (max(ms, slow.get(key, (0,))[0]), params)
    LoggingCursor.execute = execute
    try:
        yield counter
    finally:
        LoggingCursor.execute = original


def retention(options):
    """The size of ir_email per email before and after the purge, on
    PostgreSQL: N real emails sent by the module, aged past the retention,
    then purged by the task of the module"""
    from trytond import config
    config.update_etc(options['config'])  # before the imports that read it
    import psycopg

    from trytond.modules.marketing_automation.tests import tools
    from trytond.pool import Pool
    from trytond.transaction import Transaction

    database, size = options['database'], options['size']
    uri = config.get('database', 'uri').rstrip('/') + '/' + database
    Pool.start()
    pool = Pool(database)
    with Transaction().start(database, 0, readonly=True):
        pool.init()
        counter = tools.StatementCounter(keep=False).__enter__()
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')
    Email = pool.get('ir.email')
    step = functools.partial(Step, options['count_file'], counter)

    def sizes(table='ir_email'):
        """Return the sizes of table in bytes and the average sizes of its
        rows and bodies as stored (compressed, inline or in TOAST)"""
        with psycopg.connect(uri, autocommit=True) as connection:
            total, heap, toast, indexes, rows = connection.execute(
                "SELECT pg_total_relation_size(c.oid), "
                "pg_relation_size(c.oid), "
                "COALESCE(pg_total_relation_size(c.reltoastrelid), 0), "
                "pg_indexes_size(c.oid), "
                "(SELECT COUNT(*) FROM %s) "
                "FROM pg_class c WHERE c.oid = '%s'::regclass"
                % (table, table)).fetchone()
            row, body, message, length = connection.execute(
                "SELECT AVG(pg_column_size(e.*)), "
                "AVG(COALESCE(pg_column_size(body), 0)), "
                "AVG(COALESCE(pg_column_size(marketing_automation_message), "
                "0)), AVG(COALESCE(OCTET_LENGTH(body), 0)) FROM %s e"
                % table).fetchone()
        return {'total': total, 'heap': heap, 'toast': toast,
            'indexes': indexes, 'rows': rows,
            'avg_row_bytes': round(float(row or 0)),
            'avg_body_bytes': round(float(body or 0)),
            'avg_message_bytes': round(float(message or 0)),
            'avg_body_length': round(float(length or 0)),
            'mb_per_million': round(total / max(rows, 1) * 1e6 / 2 ** 20, 1)}

    def live_sizes():
        """Return the sizes of the live rows of ir_email, with its indexes:
        those of a copy, as VACUUM FULL would leave it. VACUUM FULL itself
        keeps the dead rows while any transaction of the server is older,
        which on a shared server is most of the time"""
        with psycopg.connect(uri, autocommit=True) as connection:
            connection.execute('DROP TABLE IF EXISTS bench_email_copy')
            connection.execute('CREATE TABLE bench_email_copy '
                '(LIKE ir_email INCLUDING ALL)')
            connection.execute(
                'INSERT INTO bench_email_copy SELECT * FROM ir_email')
            connection.execute('VACUUM (ANALYZE) bench_email_copy')
        try:
            return sizes('bench_email_copy')
        finally:
            with psycopg.connect(uri, autocommit=True) as connection:
                connection.execute('DROP TABLE bench_email_copy')

    def vacuumed_sizes():
        "Return the sizes of ir_email after a plain VACUUM"
        with psycopg.connect(uri, autocommit=True) as connection:
            connection.execute('VACUUM (ANALYZE) ir_email')
        return sizes()

    started = time.perf_counter()
    with Transaction().start(database, 0) as transaction:
        tools.create_parties('Party', size)
        scenario, = Scenario.create([dict(SCENARIO, activities=[('create', [
                            dict(send_email('News'),
                                email_template=NEWSLETTER)])])])
        Scenario.run([scenario])
        transaction.commit()
        Scenario.trigger()
        transaction.commit()
    # The root emails, rendered and sent by the module
    with step() as send, Transaction().start(database, 0) as transaction:
        RecordActivity.process()
        transaction.commit()
    result = {'size': size, 'backend': options['backend'],
        'batch_size': config.getint('marketing', 'automation_batch_size'),
        'setup_seconds': round(time.perf_counter() - started, 2),
        'send': send.result('email')}
    # Past the retention of 90 days
    with Transaction().start(database, 0) as transaction:
        table = Email.__table__()
        old = dt.datetime.now() - dt.timedelta(days=100)
        transaction.connection.cursor().execute(*table.update(
                [table.create_date, table.marketing_automation_sent_at],
                [old, old]))
        transaction.commit()
    # The statistics that autovacuum keeps after so many changes
    with psycopg.connect(uri, autocommit=True) as connection:
        connection.execute('ANALYZE ir_email')
    result['before'] = live_sizes()
    # The plans of the first and of a next batch of the purge, as its
    # SELECT with the values
    at = 'COALESCE(marketing_automation_sent_at, create_date)'
    with psycopg.connect(uri, autocommit=True) as connection:
        for key, keyset in [('purge_plan', ''), ('purge_plan_next',
                    "AND (%(at)s, id) > "
                    "(LOCALTIMESTAMP - INTERVAL '101 days', 1000) ")]:
            result[key] = [line for line, in connection.execute((
                        "EXPLAIN SELECT id, %(at)s FROM ir_email "
                        "WHERE marketing_automation_status IS NOT NULL "
                        "AND body IS NOT NULL "
                        "AND %(at)s < LOCALTIMESTAMP - INTERVAL '90 days' "
                        + keyset + "ORDER BY %(at)s, id LIMIT 500")
                    % {'at': at})]
    with step() as purge, Transaction().start(database, 0) as transaction:
        purged = Email.marketing_automation_purge()
    result['purge'] = purge.result('email', purged, purged=purged)
    # With nothing left to purge
    with step() as again, Transaction().start(database, 0) as transaction:
        purged = Email.marketing_automation_purge()
    result['purge_again'] = again.result(purged=purged)
    result['after_vacuum'] = vacuumed_sizes()
    result['after'] = live_sizes()
    return result


def workers(options):
    """Send the root emails of N parties with K trytond-worker processes on
    PostgreSQL: the cron's RecordActivity.process() queues the work and the
    workers run it. The time goes from the call of process() to the last
    email received; exactly once is checked at the SMTP server of run.py,
    which writes the Message-ID of each email it receives to ids_file

    kind is campaign: the workers compose and deliver the emails; or
    backlog: the emails are composed beforehand, as those left in the
    outbox by a mail server that was down, and the workers deliver them."""
    from trytond import config
    config.update_etc(options['config'])  # before the imports that read it
    import threading
    from collections import Counter

    import psycopg

    from trytond.modules.marketing_automation.tests import tools
    from trytond.pool import Pool
    from trytond.transaction import Transaction

    database, size = options['database'], options['size']
    processes = options['processes']
    uri = config.get('database', 'uri').rstrip('/') + '/' + database
    directory = os.path.dirname(options['config'])
    Pool.start()
    pool = Pool(database)
    with Transaction().start(database, 0, readonly=True):
        pool.init()
    Scenario = pool.get('marketing.automation.scenario')
    RecordActivity = pool.get('marketing.automation.record.activity')
    Email = pool.get('ir.email')

    Queue = pool.get('ir.queue')
    backlog = options['kind'] == 'backlog'

    started = time.perf_counter()
    with Transaction().start(database, 0) as transaction:
        tools.create_parties('Party', size)
        # The backlog has no children that the run would make due
        scenario, = Scenario.create([dict(SCENARIO, activities=[
                        ('create', [send_email('News')])])
                if backlog else SCENARIO])
        Scenario.run([scenario])
        root, = (a.id for a in scenario.activities)
        transaction.commit()
        Scenario.trigger()
        transaction.commit()
        if backlog:
            for record_activities in RecordActivity.due():
                RecordActivity.run(record_activities)
                transaction.commit()
            # The delivery is queued by the timed process()
            Queue.delete(Queue.search([]))
            transaction.commit()
    setup = round(time.perf_counter() - started, 2)

    def query(sql, *params):
        with psycopg.connect(uri, autocommit=True) as connection:
            return connection.execute(sql, params).fetchall()

    logconf = tools.logging_config(directory)
    log_path = os.path.join(directory, 'workers-%s-%s.log' % (
            processes, os.getpid()))
    command = [os.path.join(os.path.dirname(sys.executable),
            'trytond-worker'), '-c', options['config'], '-d', database,
        '-n', '1', '--logconf', logconf]
    samples, sampling = Counter(), threading.Event()
    locks = Counter()

    def sample():
        """Count the states and waits of the other connections to database,
        and the lock waits by query apart"""
        with psycopg.connect(uri, autocommit=True) as connection:
            while not sampling.wait(0.05):
                locks['samples'] += 1
                for row in connection.execute("SELECT state, "
                        "wait_event_type, wait_event, left(query, 50) "
                        "FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'",
                        (database,)):
                    state, kind, event, text = row
                    if kind == 'Lock':
                        locks['%s %s' % (event, text)] += 1
                    if state == 'active' or kind == 'Lock':
                        samples['%s %s:%s %s' % (
                                state, kind, event, text)] += 1
                    else:
                        samples['%s %s:%s' % (state, kind, event)] += 1

    def cpu(pids):
        "Return the CPU seconds of the processes of pids still running"
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                with open('/proc/%s/stat' % pid) as file:
                    fields = file.read().rsplit(')', 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return round(total / os.sysconf('SC_CLK_TCK'), 2)

    def group_pids(groups):
        pids = []
        for name in os.listdir('/proc'):
            if name.isdigit():
                with contextlib.suppress(OSError):
                    with open('/proc/%s/stat' % name) as file:
                        fields = file.read().rsplit(')', 1)[1].split()
                    if int(fields[2]) in groups:
                        pids.append(int(name))
        return pids

    with open(log_path, 'w') as log:
        running = [tools.start_process(command, stdout=log, stderr=log)
            for _ in range(processes)]
        sampler = threading.Thread(target=sample)
        try:
            # A worker listens once its pool is ready and it found no task
            deadline = time.monotonic() + 120
            while query("SELECT COUNT(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND query LIKE 'LISTEN%%'",
                    database)[0][0] < processes:
                if time.monotonic() > deadline or any(
                        p.poll() is not None for p in running):
                    raise RuntimeError("the workers do not start")
                time.sleep(0.1)
            backends = [p for p, in query("SELECT pid FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    database)]
            workers = group_pids({p.pid for p in running})
            cpu_start = cpu(workers), cpu(backends)
            received = os.path.getsize(options['count_file'])
            load = round(os.getloadavg()[0], 2)
            sampler.start()
            start = time.perf_counter()
            with Transaction().start(database, 0) as transaction:
                RecordActivity.process()
                transaction.commit()
            queued = time.perf_counter() - start
            last, progress, end = 0, time.monotonic(), time.perf_counter()
            while last < size and time.monotonic() - progress < 60:
                count = os.path.getsize(options['count_file']) - received
                if count != last:
                    last, progress = count, time.monotonic()
                    end = time.perf_counter()
                time.sleep(0.005)
            seconds = end - start
            # The tasks left, and a moment for an email sent twice
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and query(
                    "SELECT COUNT(*) FROM ir_queue "
                    "WHERE finished_at IS NULL")[0][0]:
                time.sleep(0.1)
            time.sleep(1)
            backends += [p for p, in query("SELECT pid FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    database) if p not in backends]
            workers = group_pids({p.pid for p in running})
            cpu_end = cpu(workers), cpu(backends)
        finally:
            sampling.set()
            if sampler.is_alive():
                sampler.join()
            for process in running:
                tools.stop_process(process, 20)
    with open(options['ids_file'], 'rb') as file:
        ids = [line.strip().decode() for line in file]
    with Transaction().start(database, 0, readonly=True):
        emails = Email.search_read([
                ('marketing_automation_activity', '=', root),
                ], fields_names=['message_id', 'marketing_automation_status'])
    expected = {e['message_id'] for e in emails}
    statuses = Counter(e['marketing_automation_status'] for e in emails)
    # The tasks by method: how many, their seconds in all, and from the
    # first taken to the last finished
    tasks, busy, spans = Counter(), Counter(), {}
    for data, dequeued, finished in query(
            "SELECT data, dequeued_at, finished_at FROM ir_queue"):
        data = json.loads(data) if isinstance(data, str) else data
        method = data['method']
        tasks[method] += 1
        if dequeued and finished:
            busy[method] += (finished - dequeued).total_seconds()
            first, last_ = spans.get(method, (dequeued, finished))
            spans[method] = min(first, dequeued), max(last_, finished)
    with open(log_path) as file:
        errors = [line.rstrip() for line in file
            if ' ERROR ' in line or ' CRITICAL ' in line][:10]
    return {'size': size, 'processes': processes, 'setup_seconds': setup,
        'kind': options['kind'],
        'seconds': round(seconds, 3), 'queue_seconds': round(queued, 3),
        'emails': last,
        'emails_per_second': round(last / max(seconds, 1e-3), 1),
        'received': len(ids), 'duplicates': len(ids) - len(set(ids)),
        'missing': len(expected - set(ids)), 'composed': len(emails),
        'unexpected': len(set(ids) - expected),
        'statuses': dict(statuses), 'tasks': dict(tasks),
        'task_seconds': {m: round(b, 2) for m, b in busy.items()},
        'task_spans': {m: round((e - f).total_seconds(), 2)
            for m, (f, e) in spans.items()},
        'load_average': load,
        'cpu_workers': round(cpu_end[0] - cpu_start[0], 2),
        'cpu_postgresql': round(cpu_end[1] - cpu_start[1], 2),
        'waits': dict(samples.most_common(15)), 'lock_waits': dict(locks),
        'errors': errors}


if __name__ == '__main__':
    options = json.loads(sys.argv[1])
    result = {'floor': floor, 'reports_build': reports_build,
        'reports_read': reports_read, 'retention': retention,
        'workers': workers}.get(
        options['mode'], module)(options)
    print('@@result ' + json.dumps(result), flush=True)
