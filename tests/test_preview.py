# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The email as it will look: the rendered preview of an activity for a
record and of an archived email, the skeleton of a new template, and the
pages that a recipient, or a marketer testing, reaches"""
import html
from urllib.parse import quote

from lxml import html as lxml_html

from trytond.exceptions import UserError
from trytond.model.exceptions import AccessError
from trytond.modules.company.tests.test_module import create_company
from trytond.modules.marketing_automation.tests.tools import (
    BASE, EXTRAS, SETTINGS, DatabaseTestCase, create_parties, create_scenario,
    create_user, email_activity, follow, links, record_activities_of, run_due,
    smtp_server, tracked, unsubscribe_links)
from trytond.pool import Pool
from trytond.pyson import PYSONEncoder
from trytond.tests.test_tryton import with_transaction
from trytond.transaction import Transaction

REPORT = 'marketing.automation.email.preview'
# Images and styles as the marketer writes them
STYLED_TEMPLATE = (
    '<html><head><style>p{color:#336}</style></head><body>'
    '<img src="https://shop.example.com/logo.png" alt="Shop"/>'
    '<p style="font-weight:bold">Dear ${record.name},</p>'
    '<p><a href="https://shop.example.com/offer">See the offer</a> '
    '<a href="https://shop.example.com/news?a=1&amp;b=2">News</a> '
    '<a href="mailto:help@example.com">Help</a></p>'
    '<p><a href="unsubscribe">Unsubscribe</a> or '
    '<a href="unsubscribe|https://shop.example.com/bye">leave us</a></p>'
    '</body></html>')
TARGETS = [
    'https://shop.example.com/offer', 'https://shop.example.com/news?a=1&b=2',
    'mailto:help@example.com']


def harmless_url():
    "The unsubscribe link of the previews and the test emails"
    return '%s/m/%s/u/test' % (
        BASE, quote(Transaction().database.name, safe=''))


def execute(ids, **data):
    "Return the type, the HTML and the name of the report on ids"
    pool = Pool()
    ModelData = pool.get('ir.model.data')
    Report = pool.get(REPORT, type='report')
    # As the clients call it
    data.setdefault('action_id', ModelData.get_id(
            'marketing_automation', 'report_email_preview'))
    data.setdefault('ids', ids)
    data.setdefault('id', ids[0])
    kind, content, _, name = Report.execute(ids, data)
    return kind, bytes(content), name


def document(content):
    return lxml_html.document_fromstring(content.decode('utf-8-sig'))


class PreviewTestCase(DatabaseTestCase):
    "The email rendered, before and after it is sent"
    settings = SETTINGS

    def scenario(self, prefix, count=2, **values):
        create_parties(prefix, count)
        values.setdefault('email_template', STYLED_TEMPLATE)
        return create_scenario(prefix, [email_activity(**values)])

    def assert_untracked(self, content):
        """The HTML shows the images and styles of the template and its
        links to their targets; nothing in it goes through a tracked URL"""
        page = document(content)
        self.assertEqual(page.xpath('//img/@src')[0],
            'https://shop.example.com/logo.png')
        self.assertEqual(page.xpath('//style/text()'), ['p{color:#336}'])
        self.assertEqual(
            page.xpath('//p[@style]/@style'), ['font-weight:bold'])
        hrefs = page.xpath('//a/@href')
        self.assertEqual(hrefs[:3], TARGETS)
        self.assertEqual(hrefs[3:], [harmless_url()] * 2)
        text = content.decode('utf-8')
        for kind in ['c', 'o', 'oa']:
            self.assertNotIn('/%s/' % kind, text.replace(BASE, ''))
        return page

    @with_transaction()
    def test_record(self):
        "The report shows the email of an activity for the chosen record"
        pool = Pool()
        Party = pool.get('party.party')
        scenario = self.scenario('RR')
        activity, = scenario.activities
        _, second = Party.search(
            [('code', 'like', 'RR-%')], order=[('code', 'ASC')])
        kind, content, name = execute(
            [activity.id], model=activity.__name__, record=str(second))
        self.assertEqual(kind, 'html')
        # Read as UTF-8 by a browser, whatever its locale
        self.assertTrue(content.startswith('\ufeff'.encode('utf-8')))
        self.assertIn("Email Preview", name)
        page = self.assert_untracked(content)
        self.assertEqual(page.xpath('//p[@style]/text()'), ['Dear RR 1,'])
        # Nothing enrolled, nothing archived
        self.assertEqual(record_activities_of(scenario), [])
        self.assertEqual(pool.get('ir.email').search([
                    ('marketing_automation_activity', '=', activity.id)]), [])

    @with_transaction()
    def test_record_sample(self):
        """Without a record, the report shows the email of the first record
        that the scenario matches, as the preview does"""
        scenario = self.scenario('RS')
        activity, = scenario.activities
        _, content, _ = execute([activity.id], model=activity.__name__)
        self.assertEqual(
            document(content).xpath('//p[@style]/text()'), ['Dear RS 0,'])

    @with_transaction()
    def test_record_refused(self):
        """A template that fails, a scenario that matches nothing and a
        record of another model say why"""
        pool = Pool()
        User = pool.get('res.user')
        failing = self.scenario(
            'RF', email_template='<p>${record.name.missing}</p>')
        activity, = failing.activities
        with self.assertRaises(UserError) as cm:
            execute([activity.id], model=activity.__name__)
        self.assertIn('could not be rendered', cm.exception.message)
        self.assertIn('missing', cm.exception.message)

        empty = create_scenario('RN', [email_activity()])
        activity, = empty.activities
        for record in [None, str(User(Transaction().user))]:
            with self.subTest(record=record), \
                    self.assertRaises(UserError) as cm:
                execute([activity.id], model=activity.__name__,
                    record=record)
            self.assertIn('No record matches', cm.exception.message)

    @with_transaction()
    def test_wizard(self):
        """The preview opens the report for its record, and stays open"""
        pool = Pool()
        Party = pool.get('party.party')
        Preview = pool.get('marketing.automation.activity.preview',
            type='wizard')
        scenario = self.scenario('RW')
        activity, = scenario.activities
        _, second = Party.search(
            [('code', 'like', 'RW-%')], order=[('code', 'ASC')])
        session_id, start, _ = Preview.create()
        with Transaction().set_context(
                active_model=activity.__name__, active_id=activity.id,
                active_ids=[activity.id]):
            result = Preview.execute(session_id, {}, start)
            self.assertIn('show', [
                    b['state'] for b in result['view']['buttons']])
            result = Preview.execute(
                session_id, {'start': {'record': str(second)}}, 'show')
        self.assertEqual(result['view']['state'], 'start')
        (action, data), = result['actions']
        self.assertEqual(action['report_name'], REPORT)
        self.assertEqual(data['record'], str(second))
        _, content, _ = execute(data.pop('ids'), **data)
        self.assertEqual(
            document(content).xpath('//p[@style]/text()'), ['Dear RW 1,'])

    @with_transaction()
    def test_sent(self):
        """The report shows an archived email as it was sent, its tracked
        links to their targets, its open image inert and its unsubscribe
        links harmless"""
        pool = Pool()
        Email = pool.get('ir.email')
        Record = pool.get('marketing.automation.record')
        scenario = self.scenario('SE', count=1)
        activity, = scenario.activities
        Pool().get('marketing.automation.scenario').trigger([scenario])
        run_due()
        with smtp_server() as sink:
            Email.marketing_automation_deliver()
        message, = sink.messages
        email, = Email.search([
                ('marketing_automation_activity', '=', activity.id)])
        self.assertEqual(email.marketing_automation_status, 'sent')
        sent = links(message)
        self.assertEqual(len(tracked(message)), 2)

        kind, content, _ = execute([email.id], model='ir.email')
        self.assertEqual(kind, 'html')
        page = self.assert_untracked(content)
        # The open image keeps its place, drawn from the report itself
        pixel, = page.xpath('//img[@width="1"]/@src')
        self.assertTrue(pixel.startswith('data:image/gif;base64,'))
        text = content.decode('utf-8')
        for url in sent:
            if url not in TARGETS and not url.startswith('https://shop.'):
                self.assertNotIn(html.escape(url), text)
        # Only the links changed
        self.assertEqual(
            page.xpath('//body//text()'),
            document(email.body.encode('utf-8')).xpath('//body//text()'))

        # Its unsubscribe links unsubscribe nobody
        Transaction().commit()
        for url in set(page.xpath('//a/@href')) - set(TARGETS):
            response = follow(url)
            self.assertEqual(response.status_code, 200)
            self.assertIn('a test email', response.get_data(as_text=True))
            self.assertEqual(follow(url, data={
                        'unsubscribe': '1'}).status_code, 200)
        record, = Record.search([('scenario', '=', scenario.id)])
        self.assertFalse(record.blocked)
        self.assertEqual(len(unsubscribe_links(message)), 2)

    @with_transaction()
    def test_sent_unknown_links(self):
        """A link of another email, or of a key the email does not know,
        stays as sent: it would be answered 404"""
        pool = Pool()
        Email = pool.get('ir.email')
        scenario = create_scenario('SU', [email_activity()])
        database = quote(Transaction().database.name, safe='')
        other = '%s/m/%s/c/%s/%s' % (BASE, database, 'a' * 32, 'b' * 16)
        unknown = '%s/m/%s/c/%s/%s' % (BASE, database, 'c' * 32, 'd' * 16)
        email, = Email.create([{
                    'resource': str(scenario),
                    'recipients': 'a@example.com',
                    'subject': "Old",
                    'body': '<p><a href="%s">A</a> <a href="%s">B</a></p>' % (
                        other, unknown),
                    'marketing_automation_token': 'c' * 32,
                    'marketing_automation_links': '{}',
                    }])
        _, content, _ = execute([email.id], model='ir.email')
        self.assertEqual(
            document(content).xpath('//a/@href'), [other, unknown])

        email.body = None
        email.save()
        with self.assertRaises(UserError):
            execute([email.id], model='ir.email')

    @with_transaction()
    def test_access(self):
        """Only the marketing group opens the report, and a user who cannot
        read the marketing emails cannot open theirs"""
        pool = Pool()
        Email = pool.get('ir.email')
        scenario = self.scenario('AC', count=1)
        activity, = scenario.activities
        email, = Email.create([{
                    'resource': str(activity),
                    'recipients': 'a@example.com', 'subject': "Sent",
                    'body': '<p>Sent</p>',
                    'marketing_automation_activity': activity.id,
                    }])
        clerk = create_user('preview_clerk', ['party.group_party_admin'])
        marketer = create_user(
            'preview_marketer', ['marketing.group_marketing'])
        transaction = Transaction()
        with transaction.set_user(clerk.id), \
                transaction.set_context(_check_access=True):
            for ids, model in [
                    ([activity.id], activity.__name__),
                    ([email.id], 'ir.email')]:
                with self.subTest(model=model), \
                        self.assertRaises(AccessError):
                    execute(ids, model=model)
        with transaction.set_user(marketer.id), \
                transaction.set_context(_check_access=True):
            _, content, _ = execute([email.id], model='ir.email')
        self.assertIn(b'<p>Sent</p>', content)

    @with_transaction()
    def test_default_template(self):
        """A new activity starts from a template that works: a greeting, a
        link and the unsubscribe link"""
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Party = pool.get('party.party')
        template = Activity.default_email_template()
        self.assertIn('${record.rec_name}', template)
        create_parties('DT', 1)
        scenario = create_scenario('DT', [{
                    'name': "Started", 'action': 'send_email',
                    'email_title': "Hello",
                    }])
        activity, = scenario.activities
        self.assertEqual(activity.email_template, template)
        party, = Party.search([('code', '=', 'DT-000000')])
        _, content, _ = execute(
            [activity.id], model=activity.__name__, record=str(party))
        page = document(content)
        self.assertEqual(page.xpath('//p/text()')[0], 'Hello DT 0,')
        self.assertEqual(
            page.xpath('//a/@href'),
            ['https://www.example.com/', harmless_url()])


class TestPageTestCase(DatabaseTestCase):
    "The unsubscribe link of a test email"
    settings = SETTINGS

    def test_test_email(self):
        """The unsubscribe links of a test email open a page that says it
        was a test; nothing changes"""
        @with_transaction()
        def send_test():
            pool = Pool()
            Preview = pool.get(
                'marketing.automation.activity.preview', type='wizard')
            create_parties('TE', 1)
            scenario = create_scenario('TE', [email_activity()])
            activity, = scenario.activities
            session_id, start, _ = Preview.create()
            with smtp_server() as sink, Transaction().set_context(
                    active_model=activity.__name__, active_id=activity.id,
                    active_ids=[activity.id]):
                result = Preview.execute(session_id, {}, start)
                record = result['view']['defaults']['record']
                Preview.execute(session_id, {}, 'test')
                Preview.execute(session_id, {
                        'start': {'record': record},
                        'test': {'addresses': 'me@example.com'},
                        }, 'send_')
                Transaction().commit()
            message, = sink.messages
            return message, harmless_url(), Transaction().database.name

        @with_transaction()
        def enrolled():
            Record = Pool().get('marketing.automation.record')
            return Record.search([])

        message, url, database = send_test()
        self.assertEqual(set(unsubscribe_links(message)), {url})
        self.assertEqual(message['List-Unsubscribe'], '<%s>' % url)
        for kwargs in [{}, {'method': 'HEAD'}, {'data': {'unsubscribe': '1'}},
                {'headers': {'Accept-Language': 'fr'}}]:
            with self.subTest(**kwargs):
                response = follow(url, **kwargs)
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.mimetype, 'text/html')
        page = follow(url).get_data(as_text=True)
        self.assertIn(
            'This unsubscribe link comes from a test email or a preview', page)
        self.assertNotIn('<form', page)
        # The one-click of a mail program gets its empty answer
        response = follow(url, data={'List-Unsubscribe': 'One-Click'})
        self.assertEqual((response.status_code, response.data), (200, b''))
        self.assertEqual(enrolled(), [])

        # Bad input is still answered 4xx
        for bad in [
                url.replace(quote(database, safe=''), 'nodb'),
                url + '/' + 'a' * 16, url[:-1], url[:-len('test')] + 'TEST']:
            with self.subTest(url=bad):
                response = follow(bad)
                self.assertEqual(response.status_code, 404, response.data)
        self.assertEqual(follow(url, method='PUT').status_code, 405)


def unsubscribe_url(record):
    return '%s/m/%s/u/%s' % (
        BASE, quote(Transaction().database.name, safe=''), record.uuid)


class PublicNameTestCase(DatabaseTestCase):
    "The unsubscribe page names the scenario and the company to recipients"
    modules = ['marketing_automation'] + EXTRAS
    settings = SETTINGS

    def page(self, url):
        "Return the company and the text of the unsubscribe page of url"
        response = follow(url)
        self.assertEqual(response.status_code, 200, response.data)
        page = lxml_html.document_fromstring(response.data)
        return (page.findtext('.//div[@class="company"]'),
            page.findtext('.//p'))

    def test_public_name(self):
        """The page shows the public name in the party's language, or the
        name without one, and the only company of the database"""
        @with_transaction()
        def prepare():
            pool = Pool()
            Lang = pool.get('ir.lang')
            Party = pool.get('party.party')
            Record = pool.get('marketing.automation.record')
            Scenario = pool.get('marketing.automation.scenario')
            transaction = Transaction()
            lang, = Lang.search([('code', '=', 'fr')])
            Lang.load_translations([lang])
            _, french = Party.browse(create_parties('PN', 2))
            french.lang = lang
            french.save()
            internal = create_scenario(
                'PN', [email_activity()], name="Q3 win-back, segment B")
            public = create_scenario(
                'PN', [email_activity()], name="Q3 win-back, segment C",
                public_name="Our news")
            with transaction.set_context(language='fr'):
                Scenario.write([Scenario(public.id)], {
                        'public_name': "Nos nouvelles"})
            Scenario.trigger([internal, public])
            urls = {(r.scenario.name, r.party.code): unsubscribe_url(r)
                for r in Record.search([])}
            transaction.commit()
            return urls

        @with_transaction()
        def add_company():
            create_company(name="Example Shop")
            Transaction().commit()

        urls = prepare()
        self.assertEqual(
            self.page(urls["Q3 win-back, segment B", 'PN-000000']),
            (None, 'Do you want to stop receiving the emails of '
                '"Q3 win-back, segment B"?'))
        self.assertEqual(
            self.page(urls["Q3 win-back, segment C", 'PN-000000']),
            (None, 'Do you want to stop receiving the emails of '
                '"Our news"?'))
        _, text = self.page(urls["Q3 win-back, segment C", 'PN-000001'])
        self.assertIn('Nos nouvelles', text)
        self.assertNotIn('Our news', text)

        # The only company of the database sends the party's emails
        add_company()
        self.assertEqual(
            self.page(urls["Q3 win-back, segment C", 'PN-000000']),
            ("Example Shop",
                'Do you want to stop receiving the emails of "Our news"?'))


class CompanyTestCase(PublicNameTestCase):
    "The unsubscribe page of a record of a company"

    test_public_name = None

    def test_company_of_record(self):
        "A scenario on sales shows the company of the sale"
        @with_transaction()
        def prepare():
            pool = Pool()
            Party = pool.get('party.party')
            Record = pool.get('marketing.automation.record')
            Sale = pool.get('sale.sale')
            Scenario = pool.get('marketing.automation.scenario')
            transaction = Transaction()
            first = create_company(name="First Shop")
            second = create_company(
                name="Second Shop", currency=first.currency)
            party, = Party.browse(create_parties('CS', 1))
            for company in [first, second]:
                with transaction.set_context(company=company.id):
                    Sale.create([{'company': company.id, 'party': party.id,
                                'currency': company.currency.id}])
            # A sale has no name: its party has
            scenario = create_scenario(
                'CS', [email_activity(
                        email_title="Hello ${record.party.name}",
                        email_template=STYLED_TEMPLATE.replace(
                            'record.name', 'record.party.name'))],
                model='sale.sale',
                domain=PYSONEncoder().encode(
                    [('party.code', '=', 'CS-000000')]))
            Scenario.trigger([scenario])
            urls = [unsubscribe_url(r) for r in Record.search([])]
            transaction.commit()
            return urls

        urls = prepare()
        self.assertEqual(len(urls), 2)
        self.assertEqual(
            sorted(self.page(u)[0] for u in urls),
            ["First Shop", "Second Shop"])
