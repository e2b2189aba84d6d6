# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The email as the recipient sees it, for the clients to open in a browser

One report for two sources: an activity, rendered for a record as it would
be sent, and an email of the archive, as it was sent. Its images and styles
are those of the email; its links go to their original targets, never
through the tracking routes, so that opening the preview and clicking in it
counts no open and no click; its unsubscribe links lead to the page of a
test, which changes nothing."""
import base64
import html
import re

from trytond.i18n import gettext
from trytond.pool import Pool
from trytond.report import Report

from . import email_, preview, routes
from .exceptions import PreviewError

# Browsers read a file with no charset in the locale's encoding, mail
# programs in the charset of the MIME part: UTF-8
BOM = '\ufeff'
# The open image of the email, drawn but fetched from nowhere
INERT_PIXEL = 'data:image/gif;base64,' + base64.b64encode(
    routes.PIXEL).decode('ascii')
# A URL of the routes of this module, starting where an attribute value or
# a word starts: scanned from there only, as a body may hold long data URIs
ROUTE = re.compile(
    r'''(?<![^\s"'<>=(])[^\s"'<>]*/m/[^/\s"'<>]+/(?:'''
    r'''c/(?P<token>[0-9a-f]{32})/(?P<key>[0-9a-f]{16})'''
    r'''|(?P<open>(?:o|oa)/[0-9a-f]{32}\.gif)'''
    r'''|(?P<unsubscribe>u/[0-9a-f]{32}(?:/[0-9a-f]{16})?)'''
    r''')(?=["'\s<>)]|$)''')


def for_record(activity, resource):
    """Return the subject and the HTML of the email of activity for
    resource, as it would be sent but with its links untracked

    Raise PreviewError with the reason when it cannot be rendered."""
    try:
        subject, body, _ = preview.render(activity, resource)
    except Exception as exception:
        raise PreviewError(gettext(
                'marketing_automation.msg_render_failed',
                activity=activity.rec_name,
                exception=exception)) from exception
    return subject, body


def as_sent(email):
    """Return the HTML body of the archived email as it was sent, each link
    that this module tracked sent to its target, its open image inert and
    its unsubscribe links to the page of a test

    A tracked link whose target the email does not know stays as sent: it
    is answered 404 and counts nothing. The emails sent by Tryton's own
    module kept no body; the purge drops those of this module after their
    retention (see purged)."""
    body = email.body or ''
    test = html.escape(email_.unsubscribe_url(preview.TEST_RECORD))
    token = email.marketing_automation_token

    def untracked(match):
        if match.group('open'):
            return INERT_PIXEL
        elif match.group('unsubscribe'):
            return test
        elif token and match.group('token') == token:
            target = email_.target(
                email.marketing_automation_links, match.group('key'))
            if target:
                return html.escape(target)
        return match.group(0)
    # In one pass, so that no target is taken for a tracked link
    return ROUTE.sub(untracked, body)


PURGED = '''<!DOCTYPE html>
<html><head><meta charset="utf-8"/><title>%(title)s</title></head>
<body><p>%(text)s</p></body></html>
'''


def purged(email):
    """Return the page that says that the body of email was purged: the
    report opens, rather than failing on the email that has none"""
    return PURGED % {
        'title': html.escape(email.subject or ''),
        'text': html.escape(gettext(
                'marketing_automation.msg_preview_purged',
                subject=email.subject or '',
                recipients=email.recipients or '')),
        }


class EmailPreview(Report):
    """The email of an activity for a record, as it would be sent, or of
    the archive, as it was sent

    Its links go to their original targets and not through the tracked
    URLs: a click from the preview must not count as the recipient's."""
    __name__ = 'marketing.automation.email.preview'

    @classmethod
    def get_context(cls, records, header, data):
        pool = Pool()
        Activity = pool.get('marketing.automation.activity')
        Email = pool.get('ir.email')
        context = super().get_context(records, header, data)
        record, = records
        model = record.__class__.__name__
        if model == 'ir.email':
            email = Email(record.id)
            if email.marketing_automation_purged():
                context['body'] = purged(email)
            elif not email.body:
                raise PreviewError(gettext(
                        'marketing_automation.msg_preview_no_body',
                        email=email.rec_name))
            else:
                context['body'] = as_sent(email)
        elif model == 'marketing.automation.activity':
            activity = Activity(record.id)
            _, context['body'] = for_record(
                activity, cls._resource(activity, data.get('record')))
        else:
            raise ValueError("no email to show for %s" % model)
        return context

    @classmethod
    def _resource(cls, activity, reference):
        """Return the record of reference, of the model of the scenario,
        or when there is none, the first that the scenario matches"""
        pool = Pool()
        scenario = activity.scenario
        resource = None
        if reference:
            model, _, id_ = str(reference).partition(',')
            if model == scenario.model and id_.lstrip('-').isdigit():
                resource = pool.get(model)(int(id_))
        else:
            resource = preview.sample(scenario)
        if resource is None or resource.id is None or resource.id < 0:
            raise PreviewError(gettext(
                    'marketing_automation.msg_preview_no_record',
                    scenario=scenario.rec_name))
        return resource

    @classmethod
    def render(cls, report, report_context):
        # The email itself, not a template
        return (BOM + report_context['body']).encode('utf-8')
