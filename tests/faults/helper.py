# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Run one step of a fault test against a real database, in its own process

    python -P helper.py CONFIG DATABASE COMMAND [JSON ARGUMENTS]

Each command runs in one transaction that is committed, as trytond-cron
does, and prints its result as one JSON line starting with '@@result '.
The 'process' command prints '@@ready' once the pool is loaded, so that a
test can kill it with SIGKILL at a random point of the run itself."""
import datetime as dt
import json
import sys
import time

RESULT = '@@result '


def _setup(pool, args):
    "Create the parties, the scenario and its activities, and enrol them"
    Party = pool.get('party.party')
    Scenario = pool.get('marketing.automation.scenario')
    Activity = pool.get('marketing.automation.activity')
    count = args.get('parties', 10)
    no_email = set(args.get('no_email', []))
    codes = args.get('codes', {})
    to_create = []
    for i in range(count):
        name = args.get('names', {}).get(str(i), 'p%04d' % i)
        values = {'name': name}
        if str(i) in codes:
            values['code'] = codes[str(i)]
        if name not in no_email:
            values['contact_mechanisms'] = [('create', [{
                            'type': 'email',
                            'value': '%s@example.com' % name,
                            }])]
        to_create.append(values)
    Party.create(to_create)
    if args.get('cap'):
        from trytond.transaction import Transaction
        Configuration = pool.get('marketing.automation.configuration')
        # Creating a singleton locks its table, which needs a new transaction
        table = Configuration.__table__()
        Transaction().connection.cursor().execute(*table.insert(
                [table.frequency_cap, table.frequency_period,
                    table.create_uid, table.create_date],
                [[args['cap'], dt.timedelta(days=7), 0, dt.datetime.now()]]))

    scenarios = Scenario.create([{
                'name': 'Fault',
                'model': 'party.party',
                'domain': '[]',
                } for _ in range(args.get('scenarios', 1))])
    template = args.get('template', '<div><p>Hello ${record.name}</p>'
        '<p><a href="http://example.com/offer">Offer</a></p></div>')
    roots = Activity.create([{
                'name': 'Mail',
                'parent': str(scenario),
                'action': 'send_email',
                'email_title': 'Hello ${record.name}',
                'email_template': template,
                'condition': args.get('condition'),
                } for scenario in scenarios])
    # A child due in a month: it must be cancelled when the mail fails
    Activity.create([{
                'name': 'Later',
                'parent': str(root),
                'delay': dt.timedelta(days=30),
                } for root in roots])
    if args.get('run', True):
        Scenario.run(scenarios)
    if args.get('trigger', True):
        Scenario.trigger()
    return {'scenario': scenarios[0].id}


def _run(pool, args):
    Scenario = pool.get('marketing.automation.scenario')
    Scenario.run(Scenario.search([('state', '=', 'draft')]))
    return {}


def _ready(args):
    "Tell the test that the pool is loaded and wait for the common start"
    print('@@ready', flush=True)
    start_at = args.get('start_at')
    if start_at:
        time.sleep(max(0, start_at - time.time()))


def _trigger(pool, args):
    Scenario = pool.get('marketing.automation.scenario')
    _ready(args)
    Scenario.trigger()
    return {}


def _process(pool, args):
    RecordActivity = pool.get('marketing.automation.record.activity')
    _ready(args)
    RecordActivity.process()
    return {}


def _make_due(pool, args):
    "Move the next try of the outbox into the past, as if time had passed"
    from trytond.transaction import Transaction
    Email = pool.get('ir.email')
    table = Email.__table__()
    cursor = Transaction().connection.cursor()
    past = dt.datetime.now() - dt.timedelta(days=1)
    cursor.execute(*table.update(
            [table.marketing_automation_next_try], [past],
            where=table.marketing_automation_status.in_(
                ['pending', 'sending'])))
    return {}


def _cron_due(pool, args):
    "Make the processing cron due now"
    Cron = pool.get('ir.cron')
    crons = Cron.search([
            ('method', '=', 'marketing.automation.record.activity|process'),
            ])
    Cron.write(crons, {
            'next_call': dt.datetime.now() - dt.timedelta(minutes=1),
            'active': True,
            })
    return {'crons': len(crons)}


def _stats(pool, args):
    "Return the outbox, the record activities and the enrolment"
    from trytond.transaction import Transaction
    Email = pool.get('ir.email')
    RecordActivity = pool.get('marketing.automation.record.activity')
    Record = pool.get('marketing.automation.record')
    cursor = Transaction().connection.cursor()
    email = Email.__table__()
    cursor.execute(*email.select(
            email.id, email.recipients, email.message_id,
            email.marketing_automation_status,
            email.marketing_automation_attempts,
            email.marketing_automation_error,
            email.marketing_automation_next_try,
            email.marketing_automation_record,
            where=email.marketing_automation_activity != None,  # noqa: E711
            order_by=[email.id.asc]))
    emails = [{
            'id': i, 'to': to, 'message_id': message_id, 'status': status,
            'attempts': attempts, 'error': error,
            'next_try': next_try.isoformat() if next_try else None,
            'record': record,
            } for (i, to, message_id, status, attempts, error, next_try,
            record) in cursor]
    activities = []
    for ra in RecordActivity.search([], order=[('id', 'ASC')]):
        activities.append({
                'id': ra.id, 'activity': ra.activity.name,
                'record': ra.record.id,
                'party': ra.record.record.name if ra.record.record else None,
                'state': ra.state, 'error': ra.error,
                'deferred': ra.deferred,
                })
    record = Record.__table__()
    cursor.execute(*record.select(record.scenario, record.record))
    records = [list(r) for r in cursor]
    return {
        'emails': emails, 'activities': activities, 'records': records,
        'now': dt.datetime.now().isoformat(),
        }


def _queue(pool, args):
    "Return how many queued tasks are not done yet"
    from trytond.transaction import Transaction
    Queue = pool.get('ir.queue')
    table = Queue.__table__()
    cursor = Transaction().connection.cursor()
    cursor.execute(*table.select(table.name, table.finished_at))
    tasks = cursor.fetchall()
    names = {}
    for name, _ in tasks:
        names[name] = names.get(name, 0) + 1
    return {
        'unfinished': sum(1 for _, f in tasks if f is None),
        'tasks': names,
        }


COMMANDS = {
    'setup': _setup,
    'run': _run,
    'trigger': _trigger,
    'process': _process,
    'make-due': _make_due,
    'cron-due': _cron_due,
    'stats': _stats,
    'queue': _queue,
    }


def main(configfile, database, command, args='{}'):
    from trytond import config
    config.update_etc(configfile)
    from trytond.pool import Pool
    from trytond.transaction import Transaction
    args = json.loads(args)
    Pool.start()
    pool = Pool(database)
    with Transaction().start(database, 0, readonly=True):
        pool.init()
    with Transaction().start(database, 0) as transaction:
        result = COMMANDS[command](pool, args)
        transaction.commit()
    print(RESULT + json.dumps(result), flush=True)


if __name__ == '__main__':
    main(*sys.argv[1:])
