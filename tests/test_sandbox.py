# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The template sandbox, attacked the way a marketer could

Each payload is either refused when the activity is saved, or rendered and
sent through a real SMTP server, with no leak and no side effect: the test
checks the emails, the database and the file system."""
import json
import os
import secrets
import shutil
import tempfile

from trytond.model.exceptions import AccessError, ValidationError
from trytond.modules.marketing_automation import email_
from trytond.modules.marketing_automation.tests.tools import (
    BASE, SETTINGS, DatabaseTestCase, create_parties, create_scenario,
    create_user, email_activity, follow, record_activities_of, run_due,
    setting, smtp_server, tracked, unsubscribe_links)
from trytond.pool import Pool
from trytond.pyson import PYSONEncoder
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction
from trytond.url import http_host

MODULE = 'marketing_automation'
HTML = (
    '<html xmlns:py="http://genshi.edgewall.org/" '
    'xmlns:xi="http://www.w3.org/2001/XInclude"><body>%s</body></html>')
SAFE_TEMPLATE = HTML % '<p>Hello ${record.name}</p>'

# Where a payload would leave a trace on the file system
WORK = tempfile.mkdtemp(prefix='ma-sandbox-')
SECRET = secrets.token_hex(16)
SECRET_FILE = os.path.join(WORK, 'secret.txt')
TOUCHED = os.path.join(WORK, 'touched')
SHELL = "touch %s" % TOUCHED


def eval_(name, default=None):
    return {'__class__': 'Eval', 'v': name, 'd': default}


def pyson(value):
    return json.dumps(value)


# (field, text, outcome): refused at save, failed at render, or sent
PAYLOADS = [
    # Dotted access
    ('email_template', '${record.__class__}', 'refused'),
    ('email_template', '${record.__class__.search([])}', 'refused'),
    ('email_template', '${record._record}', 'refused'),
    # A method is no field of the record
    ('email_template', '${record.search([])}', 'refused'),
    ('email_template',
        "${record.write([record], {'name': 'pwned'})}", 'refused'),
    ('email_template', '${record.save()}', 'refused'),
    ('email_template', '${record.delete([record])}', 'refused'),
    ('email_template', '${record.browse([1])}', 'refused'),
    # Where the record cannot be known before rendering
    ('email_template', '${(record,)[0].search([])}', 'failed'),
    ('email_template',
        "${(record,)[0].write([record], {'name': 'pwned'})}", 'failed'),
    ('email_template', '${record.__queue__}', 'refused'),
    # trytond never reads a password hash
    ('email_template', '${record.create_uid.password_hash}', 'sent'),
    ('email_template', '${format_date.__globals__}', 'refused'),
    ('email_template', '${format_date.func}', 'failed'),
    ('email_template', '${datetime.sys}', 'failed'),
    ('email_template', '${datetime.date.__subclasses__()}', 'refused'),
    ('email_template', '${str.mro()}', 'failed'),
    ('email_template', '${[].append.__self__}', 'refused'),
    # Subscripts
    ('email_template', "${record['__class__']}", 'refused'),
    ('email_template', "${record['_record']}", 'refused'),
    ('email_template', "${record['_rec' + 'ord']}", 'failed'),
    ('email_template', "${record[('_rec' + 'ord',)][0]}", 'failed'),
    # String formatting
    ('email_template', "${'{0.__class__}'.format(record)}", 'failed'),
    ('email_template',
        "${'{0._record.__init__.__globals__}'.format(record)}", 'failed'),
    ('email_template', "${'{0[_record]}'.format(record)}", 'failed'),
    ('email_template', "${'{r._record}'.format_map({'r': record})}",
        'failed'),
    ('email_template', "${'{0.gi_frame.f_globals}'.format("
        "(x for x in [1]))}", 'failed'),
    ('email_template', "${'%(name)s' % {'name': record.name}}", 'sent'),
    ('email_template', "${'%s' % (record,)}", 'sent'),
    ('email_template', '${f"{record.__class__}"}', 'refused'),
    # Builtins
    ('email_template', '${vars(record)}', 'refused'),
    ('email_template', '${dir(record)}', 'refused'),
    ('email_template', "${getattr(record, '_record')}", 'refused'),
    ('email_template', "${open(%r).read()}" % SECRET_FILE, 'refused'),
    ('email_template', "${__import__('os').system(%r)}" % SHELL, 'refused'),
    ('email_template', "${eval('1 + 1')}", 'refused'),
    ('email_template', "${exec('import os')}", 'refused'),
    ('email_template', "${compile('1', 'x', 'eval')}", 'refused'),
    ('email_template', '${globals()}', 'refused'),
    ('email_template', '${type(record)}', 'refused'),
    ('email_template', '${().__class__.__base__.__subclasses__()}',
        'refused'),
    # Generators, frames and code objects
    ('email_template', '${(x for x in [1]).gi_frame.f_globals}', 'failed'),
    ('email_template', '${(x for x in [1]).gi_code.co_consts}', 'failed'),
    ('email_template',
        '${[g.gi_frame.f_back for g in [(x for x in [1])]]}', 'failed'),
    ('email_template', '${(lambda: 1).__code__}', 'refused'),
    # Genshi's own doors
    ('email_template',
        HTML % ('<?python\nimport os\nos.system(%r)\n?>' % SHELL),
        'refused'),
    ('email_template',
        HTML % ('<xi:include href="%s" parse="text"/>' % SECRET_FILE),
        'refused'),
    ('email_template',
        HTML % '<xi:include href="http://127.0.0.1:9/x.html"/>', 'refused'),
    ('email_template',
        '<!DOCTYPE p [<!ENTITY e SYSTEM "file://%s">]><p>&e;</p>'
        % SECRET_FILE, 'refused'),
    ('email_template',
        HTML % '<p py:with="record.name = \'pwned\'">x</p>', 'refused'),
    ('email_template',
        HTML % '<p py:with="x = record.name">${x.__class__}</p>', 'refused'),
    # Links
    ('email_template',
        HTML % '<a href="https://a.example/&#13;&#10;Set-Cookie: x=1">x</a>',
        'refused'),
    ('email_template',
        HTML % '<a href="${\'https://a.example/\\r\\nSet-Cookie: x=1\'}">'
        'x</a>', 'failed'),
    # Titles
    ('email_title', 'Hello ${record.__class__}', 'refused'),
    ('email_title', "Hello ${'{0._record}'.format(record)}", 'failed'),
    ('email_title', '{% python import os %}', 'refused'),
    ('email_title', '{%% include %s %%}' % SECRET_FILE, 'refused'),
    ('email_title', "${open(%r).read()}" % SECRET_FILE, 'refused'),
    ('email_title', "${record.write([record], {'name': 'pwned'})}",
        'refused'),
    ('email_title', "${(record,)[0].save()}", 'failed'),
    ('email_title', '${(x for x in [1]).gi_frame.f_builtins}', 'failed'),
    # Conditions
    ('condition', pyson(eval_('self.__class__')), 'refused'),
    ('condition', pyson(eval_('self._record')), 'refused'),
    ('condition', pyson(eval_('self._model')), 'refused'),
    ('condition', pyson({'__class__': 'Get', 'v': eval_('self', {}),
                'k': '_record', 'd': ''}), 'refused'),
    ('condition', pyson({'__class__': 'os.system', 'v': SHELL}), 'refused'),
    ('condition', pyson(eval_('self._parent_create_uid.password_hash', '')),
        'cancelled'),
    ('condition', pyson(eval_('self.name.__class__')), 'refused'),
    ]


class SandboxTestCase(DatabaseTestCase):
    "Test the template sandbox"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with open(SECRET_FILE, 'w') as file:
            file.write(SECRET)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(WORK, ignore_errors=True)

    settings = {
        **SETTINGS,
        ('marketing', 'sandbox_canary'): SECRET,
        }

    def save(self, values):
        "Create the activity, return it or the message that refused it"
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        last = Activity.search([], order=[('id', 'DESC')], limit=1)
        try:
            activity, = Activity.create([values])
        except ValidationError as exception:
            # Deleted, not rolled back: SQLite would give their ids again
            # while the ORM still holds what it read of them
            Activity.delete(Activity.search(
                    [('id', '>', last[0].id if last else 0)]))
            return exception.message
        return activity

    def payload_values(self, scenario, field, text):
        values = email_activity(
            parent=str(scenario), name=text[:60],
            email_template=SAFE_TEMPLATE)
        if field == 'email_template' and not text.lstrip().startswith('<'):
            text = HTML % ('<p>%s</p>' % text)
        values[field] = text
        return values

    @with_transaction()
    def test_attack_suite(self):
        "Every payload is refused or runs with no leak and no side effect"
        pool = Pool()
        Party = pool.get('party.party')
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        User = pool.get('res.user')
        self.assertGreaterEqual(len(PAYLOADS), 40)
        party_ids = create_parties('SB', 1)
        party, = Party.browse(party_ids)
        User.write([User(Transaction().user)], {
                'password': secrets.token_hex(8)})
        user = User.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*user.select(
                user.password_hash, where=user.id == Transaction().user))
        password_hash, = cursor.fetchone()
        self.assertTrue(password_hash)
        users = [(u.id, u.login, u.name) for u in User.search([])]
        scenario = create_scenario('SB', [], run=False)

        outcomes, saved = {}, {}
        for field, text, outcome in PAYLOADS:
            result = self.save(self.payload_values(scenario, field, text))
            if isinstance(result, str):
                outcomes[(field, text)] = 'refused'
                self.assertIn(text[:60], result)
                self.assertNotIn(SECRET, result)
            else:
                saved[result.id] = (field, text)
        Scenario.run([scenario])

        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()

        sent = list(sink.messages)
        by_activity = {
            ra.activity.id: ra for ra in record_activities_of(scenario)}
        for activity_id, key in saved.items():
            record_activity = by_activity[activity_id]
            if record_activity.state == 'cancelled':
                outcomes[key] = 'cancelled'
            elif record_activity.state == 'failed':
                outcomes[key] = 'failed'
                self.assertTrue(record_activity.error)
                self.assertNotIn(SECRET, record_activity.error)
                self.assertNotIn('Traceback', record_activity.error)
            else:
                self.assertEqual(record_activity.state, 'done')
                self.assertEqual(record_activity.email_status, 'sent')
                outcomes[key] = 'sent'

        self.assertEqual(
            len(sent), list(outcomes.values()).count('sent'))
        for message in sent:
            text = message.as_string()
            for leak in [SECRET, password_hash, '<class', '<module',
                    '<function', '__builtins__', '_lookup_', 'trytond.',
                    'genshi.']:
                self.assertNotIn(leak, text)

        # Nothing changed in the database nor on the disk
        party = Party(party.id)
        self.assertEqual(party.name, 'SB 0')
        self.assertEqual(
            Party.search_count([('name', '=', 'pwned')]), 0)
        self.assertEqual(
            [(u.id, u.login, u.name) for u in User.search([])], users)
        self.assertFalse(os.path.exists(TOUCHED))
        self.assertEqual(sorted(os.listdir(WORK)), ['secret.txt'])

        self.assertEqual(
            [(t, outcomes[(f, t)]) for f, t, o in PAYLOADS
                if outcomes[(f, t)] != o], [])

    @with_transaction()
    def test_helpers_render(self):
        "The documented helpers render as before"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('SH', 1)
        template = HTML % (
            '<p>${record.name} ${record.code}</p>'
            '<p py:for="mechanism in record.contact_mechanisms">'
            '${mechanism.value}</p>'
            '<p>${format_date(datetime.date(2026, 3, 1))}</p>'
            '<p>${format_datetime(datetime.datetime(2026, 3, 1, 8, 5))}</p>'
            '<p>${format_timedelta(datetime.timedelta(hours=2))}</p>'
            '<p>${format_number(1234.5, 2)}</p>'
            '<p>${"{0.name} is {1}".format(record, "here")}</p>'
            '<p>${", ".join(sorted(["b", "a"]))} ${len(record.name)}</p>'
            '<p py:if="record.create_date">'
            '${record.create_date.year > 2000}</p>')
        scenario = create_scenario('SH', [email_activity(
                    email_title="Hi ${record.name.upper()}",
                    email_template=template)])
        with smtp_server() as sink:
            Scenario.trigger([scenario])
            RecordActivity.process()
        record_activity, = record_activities_of(scenario)
        self.assertEqual(record_activity.state, 'done', record_activity.error)
        message, = sink.messages
        self.assertEqual(message['Subject'], 'Hi SH 0')
        body = message.get_body(preferencelist=('html',)).get_content()
        for expected in ['SH 0 SH-000000', 'SH-000000@example.com',
                '03/01/2026', '08:05:00', '02:00',
                '1,234.50', 'SH 0 is here', 'a, b 4', 'True']:
            self.assertIn(expected, body)

    @with_transaction()
    def test_template_no_longer_valid(self):
        """A template saved before a rule tightened fails its own record
        activities, and the run goes on"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        Translation = pool.get('ir.translation')
        create_parties('SO', 2)
        create_parties('SG', 2)
        old = create_scenario('SO', [email_activity()])
        good = create_scenario('SG', [email_activity()])
        activity, = old.activities
        # As Tryton's own module could have saved it
        table = Activity.__table__()
        cursor = Transaction().connection.cursor()
        cursor.execute(*table.update(
                [table.email_template],
                [HTML % '<p>${record.__class__.__name__}</p>'],
                where=table.id == activity.id))
        translation = Translation.__table__()
        cursor.execute(*translation.update(
                [translation.value, translation.src],
                [HTML % '<p>${record.__class__.__name__}</p>'] * 2,
                where=(translation.name
                    == 'marketing.automation.activity,email_template')
                & (translation.res_id == activity.id)))
        # A write through the ORM forgets the values that it read
        Activity.write([activity], {'name': activity.name})
        self.assertIn('__class__', Activity(activity.id).email_template)
        with smtp_server() as sink:
            Scenario.trigger([old, good])
            RecordActivity.process()
        recipients = sorted(r for _, (r,) in sink.envelopes)
        self.assertEqual(
            recipients, ['SG-000000@example.com', 'SG-000001@example.com'])
        failed = record_activities_of(old)
        self.assertEqual({ra.state for ra in failed}, {'failed'})
        for record_activity in failed:
            self.assertIn('__name__', record_activity.error)
        self.assertEqual(
            {ra.state for ra in record_activities_of(good)}, {'done'})

    @with_transaction()
    def test_automation_base_default(self):
        """Without automation_base nor [web] hostname, the emails are sent
        with their links on trytond's default host, never on the Host
        header of a request, and a warning says so once"""
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        create_parties('SU', 2)
        scenario = create_scenario('SU', [email_activity()])
        Scenario.trigger([scenario])
        transaction = Transaction()
        request = {'http_host': 'evil.example', 'is_secure': False}
        with transaction.set_context(_request=None):
            default = http_host()
        email_._warn_default_host.cache_clear()
        with setting('marketing', 'automation_base', ''), \
                setting('web', 'hostname', ''), \
                transaction.set_context(_request=request), \
                self.assertLogs(email_.__name__, 'WARNING') as logs, \
                smtp_server() as sink:
            RecordActivity.process()
            RecordActivity.process()
        self.assertEqual(len(logs.records), 1)
        self.assertIn('automation_base', logs.output[0])
        self.assertEqual(len(sink.messages), 2)
        for message in sink.messages:
            self.assertIn(default + '/m/', message['List-Unsubscribe'])
            self.assertNotIn('evil.example', message.as_string())
        self.assertEqual(
            {ra.state for ra in record_activities_of(scenario)}, {'done'})

    def test_stored_link_with_control_characters(self):
        """A link of an email already sent whose target splits a header
        answers 4xx, and its unsubscribe still works"""
        @with_transaction()
        def send():
            pool = Pool()
            Email = pool.get('ir.email')
            Scenario = pool.get('marketing.automation.scenario')
            RecordActivity = pool.get('marketing.automation.record.activity')
            transaction = Transaction()
            create_parties('SL', 1)
            scenario = create_scenario('SL', [email_activity()])
            with smtp_server() as sink:
                Scenario.trigger([scenario])
                RecordActivity.process()
            message, = sink.messages
            # As an older version could have stored it
            bad = 'https://shop.example.com/\r\nSet-Cookie: x=1'
            table = Email.__table__()
            cursor = transaction.connection.cursor()
            cursor.execute(*table.select(
                    table.id, table.marketing_automation_links,
                    where=table.message_id == message['Message-ID']))
            (email_id, links), = cursor
            links = {k: bad for k in json.loads(links)}
            cursor.execute(*table.update(
                    [table.marketing_automation_links], [json.dumps(links)],
                    where=table.id == email_id))
            transaction.commit()
            return message

        @with_transaction()
        def blocked():
            Record = Pool().get('marketing.automation.record')
            record, = Record.search([('record.code', '=', 'SL-000000',
                        'party.party')])
            return record.blocked

        message = send()
        clicks = tracked(message)
        self.assertTrue(clicks)
        for url in clicks:
            self.assertEqual(follow(url).status_code, 404)
        unsubscribe = max(unsubscribe_links(message), key=len)
        self.assertFalse(blocked())
        response = follow(unsubscribe, data={'unsubscribe': '1'})
        self.assertEqual(response.status_code, 200)
        self.assertNotIn('Location', response.headers)
        self.assertTrue(blocked())

    @with_transaction()
    def test_condition_reads_as_marketing(self):
        "A condition reads the record with the marketing group's rights"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        FieldAccess = pool.get('ir.model.field.access')
        create_parties('SC', 1)
        condition = PYSONEncoder().encode(
            {'__class__': 'Eval', 'v': 'self.code', 'd': ''})
        scenario = create_scenario('SC', [email_activity(
                    condition=condition)])
        FieldAccess.create([{
                    'model': 'party.party', 'field': 'code',
                    'group': None, 'perm_read': False, 'perm_write': False}])
        Scenario.trigger([scenario])
        # Without delivery, nothing is committed
        run_due()
        record_activity, = record_activities_of(scenario)
        self.assertEqual(record_activity.state, 'failed')
        self.assertIn('Code', record_activity.error)


class LeastPrivilegeTestCase(DatabaseTestCase):
    "Test the rights around the scenarios"

    def test_no_rpc_to_run(self):
        "The crons drive the scenarios: trigger and process are not RPC"
        @with_transaction()
        def check():
            pool = Pool()
            Scenario = pool.get('marketing.automation.scenario')
            RecordActivity = pool.get(
                'marketing.automation.record.activity')
            self.assertNotIn('trigger', Scenario.__rpc__)
            self.assertNotIn('process', RecordActivity.__rpc__)
        check()

    create_user = staticmethod(create_user)

    @with_transaction()
    def test_marketing_emails_readable_by_marketing_only(self):
        "Only the marketing group and the administrator read the emails"
        pool = Pool()
        Email = pool.get('ir.email')
        Party = pool.get('party.party')
        Scenario = pool.get('marketing.automation.scenario')
        RecordActivity = pool.get('marketing.automation.record.activity')
        transaction = Transaction()
        create_parties('LE', 1)
        scenario = create_scenario('LE', [email_activity()])
        with setting('marketing', 'automation_base', BASE), \
                smtp_server():
            Scenario.trigger([scenario])
            RecordActivity.process()
        party, = Party.search([('code', '=', 'LE-000000')])
        Email.create([{
                    'recipients': 'le@example.com', 'subject': "Invoice",
                    'resource': str(party)}])
        clerk = self.create_user('le_clerk', ['party.group_party_admin'])
        marketer = self.create_user(
            'le_marketer', ['marketing.group_marketing'])
        admin = self.create_user('le_admin', ['res.group_admin'])

        def subjects(user):
            with transaction.set_user(user.id), \
                    transaction.set_context(_check_access=True):
                return sorted(e.subject for e in Email.search([
                            ('resource', '=', str(party))]))
        self.assertEqual(subjects(clerk), ["Invoice"])
        self.assertEqual(subjects(marketer), ["Hello LE 0", "Invoice"])
        self.assertEqual(subjects(admin), ["Hello LE 0", "Invoice"])

    @with_transaction()
    def test_buttons_need_marketing(self):
        "A user outside the marketing group cannot press the buttons"
        pool = Pool()
        Scenario = pool.get('marketing.automation.scenario')
        transaction = Transaction()
        scenario = create_scenario('LB', [], run=False)
        clerk = self.create_user('lb_clerk', ['party.group_party_admin'])
        with transaction.set_user(clerk.id), \
                transaction.set_context(_check_access=True):
            with self.assertRaises(AccessError):
                Scenario.run([Scenario(scenario.id)])
        self.assertEqual(Scenario(scenario.id).state, 'draft')
