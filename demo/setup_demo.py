#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""Fill the demo database with parties and a running scenario.

The database must exist with marketing_automation activated. The script
then triggers the scenario and processes the record activities once, so the
first emails are sent at once to the SMTP server of the configuration.
"""
import argparse
import datetime as dt

from proteus import Model
from proteus import config as pconfig

PARTIES = [
    ("Alice Martin", 'alice@example.com', 'en'),
    ("Bob Smith", 'bob@example.com', 'en'),
    ("Chloé Dubois", 'chloe@example.com', 'fr'),
    ("Didier Lefèvre", 'didier@example.com', 'fr'),
    ("Emma Brown", 'emma@example.com', 'en'),
    ]

HTML = '''\
<html xmlns:py="http://genshi.edgewall.org/">
<body>
%s
</body>
</html>'''

# For each activity: name, title and template, in English then in French
WELCOME = {
    'en': ("Welcome", "Welcome ${record.name}", HTML % '''\
<p>Hello ${record.name},</p>
<p>Welcome to the demo of Tryton's marketing automation.
Here are two places to start:</p>
<ul>
<li><a href="https://www.tryton.org/">The Tryton website</a></li>
<li><a href="https://docs.tryton.org/">The Tryton documentation</a></li>
</ul>
<p>Open this email (load its images) to receive "Thanks for reading".
Click no link within a minute to receive a reminder.</p>
<p><a href="unsubscribe">Unsubscribe</a></p>'''),
    'fr': ("Bienvenue", "Bienvenue ${record.name}", HTML % '''\
<p>Bonjour ${record.name},</p>
<p>Bienvenue dans la démonstration de l'automatisation marketing de Tryton.
Voici deux liens pour commencer :</p>
<ul>
<li><a href="https://www.tryton.org/">Le site de Tryton</a></li>
<li><a href="https://docs.tryton.org/">La documentation de Tryton</a></li>
</ul>
<p>Ouvrez ce courriel (chargez ses images) pour recevoir « Merci de nous
lire ». Sans clic d'ici une minute, vous recevrez un rappel.</p>
<p><a href="unsubscribe">Se désabonner</a></p>'''),
    }
THANKS = {
    'en': (
        "Thanks for reading", "Thanks for reading, ${record.name}",
        HTML % '''\
<p>Hello ${record.name},</p>
<p>Thank you for reading our welcome email.
Click the link below to receive a follow-up.</p>
<p><a href="https://discuss.tryton.org/">Join the Tryton forum</a></p>
<p><a href="unsubscribe|https://www.tryton.org/">Unsubscribe</a></p>'''),
    'fr': (
        "Merci de nous lire", "Merci de nous lire, ${record.name}",
        HTML % '''\
<p>Bonjour ${record.name},</p>
<p>Merci d'avoir lu notre courriel de bienvenue.
Cliquez sur le lien ci-dessous pour recevoir une suite.</p>
<p><a href="https://discuss.tryton.org/">Rejoindre le forum de Tryton</a></p>
<p><a href="unsubscribe|https://www.tryton.org/">Se désabonner</a></p>'''),
    }
REMINDER = {
    'en': ("Reminder", "A reminder for ${record.name}", HTML % '''\
<p>Hello ${record.name},</p>
<p>You have not visited our links yet. Here they are again:</p>
<ul>
<li><a href="https://www.tryton.org/">The Tryton website</a></li>
<li><a href="https://docs.tryton.org/">The Tryton documentation</a></li>
</ul>
<p><a href="unsubscribe">Unsubscribe</a></p>'''),
    'fr': ("Rappel", "Un rappel pour ${record.name}", HTML % '''\
<p>Bonjour ${record.name},</p>
<p>Vous n'avez pas encore visité nos liens. Les voici à nouveau :</p>
<ul>
<li><a href="https://www.tryton.org/">Le site de Tryton</a></li>
<li><a href="https://docs.tryton.org/">La documentation de Tryton</a></li>
</ul>
<p><a href="unsubscribe">Se désabonner</a></p>'''),
    }
FOLLOW_UP = {
    'en': ("Follow-up", "What's next, ${record.name}?", HTML % '''\
<p>Hello ${record.name},</p>
<p>Thanks for your visit. The next step is to
<a href="https://www.tryton.org/download">download Tryton</a>.</p>
<p><a href="unsubscribe">Unsubscribe</a></p>'''),
    'fr': ("Suite", "Et maintenant, ${record.name} ?", HTML % '''\
<p>Bonjour ${record.name},</p>
<p>Merci de votre visite. La prochaine étape est de
<a href="https://www.tryton.org/download">télécharger Tryton</a>.</p>
<p><a href="unsubscribe">Se désabonner</a></p>'''),
    }


def set_email(activity, texts, lang='en'):
    name, title, template = texts[lang]
    activity.name = name
    activity.action = 'send_email'
    activity.email_title = title
    activity.email_template = template


def get_languages():
    Lang = Model.get('ir.lang')
    languages = {}
    for code in ['en', 'fr']:
        langs = Lang.find([('code', '=', code)])
        if langs:
            languages[code] = langs[0]
    return languages


def create_parties(languages):
    Party = Model.get('party.party')
    parties = []
    for name, email, code in PARTIES:
        party = Party(name=name)
        party.lang = languages.get(code, languages.get('en'))
        party.contact_mechanisms.new(type='email', value=email)
        parties.append(party)
    Party.save(parties)
    return parties


def create_scenario(languages):
    Scenario = Model.get('marketing.automation.scenario')
    Activity = Model.get('marketing.automation.activity')

    scenario = Scenario(name="Welcome new parties")
    scenario.model = 'party.party'
    scenario.domain = '[["contact_mechanisms.type", "=", "email"]]'
    scenario.unsubscribable = True

    welcome = scenario.activities.new()
    set_email(welcome, WELCOME)
    thanks = welcome.children.new()
    thanks.on = 'email_opened'
    set_email(thanks, THANKS)
    reminder = welcome.children.new()
    reminder.on = 'email_clicked_not'
    reminder.delay = dt.timedelta(minutes=1)
    set_email(reminder, REMINDER)
    follow_up = thanks.children.new()
    follow_up.on = 'email_clicked'
    set_email(follow_up, FOLLOW_UP)
    scenario.save()

    if 'fr' in languages:
        welcome, = scenario.activities
        thanks, = [c for c in welcome.children if c.on == 'email_opened']
        reminder, = [c for c in welcome.children if c.on != 'email_opened']
        follow_up, = thanks.children
        config = pconfig.get_config()
        with config.set_context(language='fr'):
            for activity, texts in [
                    (welcome, WELCOME),
                    (thanks, THANKS),
                    (reminder, REMINDER),
                    (follow_up, FOLLOW_UP),
                    ]:
                activity = Activity(activity.id)
                set_email(activity, texts, 'fr')
                activity.save()

    scenario.click('run')
    return scenario


def setup_crons():
    "Run the marketing crons every minute and run them once now"
    Cron = Model.get('ir.cron')
    crons = []
    for method in [
            'marketing.automation.scenario|trigger',
            'marketing.automation.record.activity|process',
            ]:
        cron, = Cron.find([('method', '=', method)])
        cron.interval_number = 1
        cron.interval_type = 'minutes'
        cron.save()
        crons.append(cron)
    for cron in crons:
        cron.click('run_once')


def close_config_wizard():
    Item = Model.get('ir.module.config_wizard.item')
    items = Item.find([('state', '!=', 'done')])
    for item in items:
        item.state = 'done'
    Item.save(items)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-c', '--config', required=True)
    parser.add_argument('-d', '--database', required=True)
    options = parser.parse_args(argv)

    pconfig.set_trytond(
        database=options.database, config_file=options.config)

    close_config_wizard()
    languages = get_languages()
    parties = create_parties(languages)
    print("Created %s parties: %s" % (
            len(parties), ', '.join(p.name for p in parties)), flush=True)
    scenario = create_scenario(languages)
    print("Scenario %r is %s" % (scenario.name, scenario.state), flush=True)
    setup_crons()
    RecordActivity = Model.get('marketing.automation.record.activity')
    done = RecordActivity.find([('state', '=', 'done')])
    print("Scenario triggered: %s email(s) sent" % len(done), flush=True)


if __name__ == '__main__':
    main()
