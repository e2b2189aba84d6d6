# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The links of the emails: open image, click redirect and unsubscribe

A URL carries only the database name and unguessable tokens. Bad input is
answered with 4xx and changes nothing."""
import base64
import datetime as dt
import logging
import re
from functools import wraps

from werkzeug.exceptions import HTTPException

import trytond.config as config
from trytond.protocols.wrappers import (
    HTTPStatus, Response, abort, redirect, with_pool, with_transaction)
from trytond.transaction import Transaction
from trytond.wsgi import app

from . import email_, pages, scanner
from .marketing_automation import current_time
from .preview import TEST_RECORD
from .tree import Event

logger = logging.getLogger(__name__)

DATABASE = re.compile(r'^[\w.:-]{1,128}$', re.ASCII)
TOKEN = re.compile(r'^[0-9a-f]{32}$')
KEY = re.compile(r'^[0-9a-f]{16}$')
# A transparent GIF of one pixel
PIXEL = base64.b64decode(
    'R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7')
ONE_CLICK = 'One-Click'
# The only body is the small unsubscribe form
MAX_REQUEST_SIZE = 16 * 1024


def public(func):
    """Make the tokens of the URL the only credentials

    With max_request_size set, trytond never reads the Authorization header
    of the request to log in."""
    func.max_request_size = MAX_REQUEST_SIZE
    # A form posted from a mail client may come from no origin
    func.allow_null_origin = True
    return func


def pixel(request=None, status=HTTPStatus.OK):
    return Response(PIXEL, status, content_type='image/gif', headers={
            'Cache-Control': 'no-store, max-age=0',
            })


def not_found(request, status=HTTPStatus.NOT_FOUND):
    "Answer a small page in the visitor's language"
    language = pages.visitor_language(request)
    return pages.response(
        pages.page(language, pages.translate(language, 'msg_link_unknown')),
        status)


def tracking(on_bad=not_found):
    """Check the shape of the URL before any database work, and never let
    bad input become a server error"""
    def decorator(func):
        @wraps(func)
        def wrapper(request, database_name, *args, **kwargs):
            if not DATABASE.match(database_name):
                return on_bad(request, HTTPStatus.NOT_FOUND)
            for value in list(args) + list(kwargs.values()):
                if not (TOKEN.match(value) or KEY.match(value)):
                    return on_bad(request, HTTPStatus.NOT_FOUND)
            try:
                return func(request, database_name, *args, **kwargs)
            except HTTPException as exception:
                if 400 <= (exception.code or 0) < 500:
                    return on_bad(request, exception.code)
                raise
        return wrapper
    return decorator


def click_delay():
    "How long after sending a click is taken for a scanner's"
    return dt.timedelta(seconds=config.getint(
            'marketing', 'automation_click_delay', default=60))


@app.route('/m/<database_name>/o/<token>.gif', methods={'GET', 'HEAD'})
@public
@tracking(on_bad=pixel)
@with_pool
@with_transaction(readonly=False)
def email_open(request, pool, token):
    RecordActivity = pool.get('marketing.automation.record.activity')
    tracked = email_.lookup(token)
    if tracked is None:
        return pixel(status=HTTPStatus.NOT_FOUND)
    if tracked.state == 'done':
        # A repeat changes nothing so it does not write
        who = scanner.classify(request)
        if who == scanner.PERSON:
            if not tracked.opened:
                RecordActivity.record_email_events(
                    [_event(tracked)], opened=True, route=True)
        elif who == scanner.MACHINE:
            if not tracked.opened_machine:
                RecordActivity.set_email_flags(
                    [RecordActivity(tracked.record_activity)],
                    'email_opened_machine', route=True)
        elif not tracked.filtered:
            RecordActivity.set_email_flags(
                [RecordActivity(tracked.record_activity)], 'email_filtered',
                route=True)
    return pixel()


@app.route('/m/<database_name>/oa/<token>.gif', methods={'GET', 'HEAD'})
@public
@tracking(on_bad=pixel)
@with_pool
@with_transaction(readonly=False)
def email_open_counted(request, pool, token):
    "Count an open of the emails of an activity, without knowing whose"
    Activity = pool.get('marketing.automation.activity')
    if scanner.classify(request) == scanner.PERSON:
        if not Activity.count_open(token):
            return pixel(status=HTTPStatus.NOT_FOUND)
    return pixel()


def _event(tracked):
    return Event(
        tracked.record_activity, tracked.activity, tracked.record,
        tracked.opened, tracked.clicked)


@app.route('/m/<database_name>/c/<token>/<key>', methods={'GET', 'HEAD'})
@public
@tracking()
@with_pool
@with_transaction(readonly=False)
def email_click(request, pool, token, key):
    RecordActivity = pool.get('marketing.automation.record.activity')
    tracked = email_.lookup(token)
    target = email_.target(tracked.links, key) if tracked else None
    if not target or not email_.redirectable(target):
        abort(HTTPStatus.NOT_FOUND)
    if tracked.state == 'done':
        early = (not tracked.sent_at
            or current_time() < tracked.sent_at + click_delay())
        if scanner.classify(request) == scanner.PERSON and not early:
            if not tracked.clicked:
                RecordActivity.record_email_events(
                    [_event(tracked)], opened=True, clicked=True, route=True)
        elif not tracked.filtered:
            RecordActivity.set_email_flags(
                [RecordActivity(tracked.record_activity)], 'email_filtered',
                route=True)
    # Every caller is sent on, only the counting differs
    return redirect(target, code=HTTPStatus.FOUND)


@app.route('/m/<database_name>/u/<record_uuid>',
    methods={'GET', 'HEAD', 'POST'})
@app.route('/m/<database_name>/u/<record_uuid>/<key>',
    methods={'GET', 'HEAD', 'POST'})
@public
def unsubscribe(request, database_name, record_uuid, key=None):
    if key is not None:
        return _unsubscribe_record(request, database_name, record_uuid, key)
    elif record_uuid == TEST_RECORD:
        return _unsubscribe_test(request, database_name)
    return _unsubscribe_record(request, database_name, record_uuid)


@tracking()
@with_pool
def _unsubscribe_test(request, pool):
    """The unsubscribe link of a preview or of a test email: it names no
    record, so nothing changes, and the page says so

    The page is in the visitor's language: the marketer's."""
    if request.method == 'POST' and (
            request.form.get('List-Unsubscribe') == ONE_CLICK):
        return Response('', HTTPStatus.OK, content_type='text/plain')
    language = pages.visitor_language(request)
    return pages.response(pages.page(
            language, pages.translate(language, 'msg_unsubscribe_test')))


@tracking()
@with_pool
@with_transaction(readonly=False)
def _unsubscribe_record(request, pool, record_uuid, key=None):
    Email = pool.get('ir.email')
    record = _record(pool, record_uuid)
    target = None
    if key:
        for email in Email.search([
                    ('marketing_automation_record', '=', record.id),
                    ]):
            target = email_.target(email.marketing_automation_links, key)
            if target:
                break
        else:
            abort(HTTPStatus.NOT_FOUND)
    # The target was stored when the email was sent: it can be followed
    if target and not email_.redirectable(target):
        target = None
    return _unsubscribe(request, pool, record, redirect_to=target)


@app.route('/m/<earlier_database_name>/unsubscribe',
    methods={'GET', 'HEAD', 'POST'})
@public
def unsubscribe_earlier(request, earlier_database_name):
    """The unsubscribe link of the emails sent by Tryton's own module: the
    database name in unpadded URL-safe base64 and the record's uuid in r"""
    try:
        database_name = base64.urlsafe_b64decode(
            earlier_database_name + '=' * (-len(earlier_database_name) % 4)
            ).decode('utf-8')
    except (ValueError, UnicodeError):
        return not_found(request)
    return _unsubscribe_earlier(
        request, database_name, request.args.get('r', ''))


@tracking()
@with_pool
@with_transaction(readonly=False)
def _unsubscribe_earlier(request, pool, record_uuid):
    record = _record(pool, record_uuid)
    # Anybody could have written next: it is shown, never followed
    link = request.args.get('next', '')
    if not (link.startswith(('https://', 'http://'))
            and email_.redirectable(link)):
        link = None
    return _unsubscribe(request, pool, record, link=link)


@app.route('/m/empty.gif', methods={'GET', 'HEAD'})
@public
def empty_image(request):
    "The open image of the emails sent by Tryton's own module"
    return pixel(request)


def _record(pool, record_uuid):
    Record = pool.get('marketing.automation.record')
    records = Record.search([('uuid', '=', record_uuid)], limit=1)
    if not records:
        abort(HTTPStatus.NOT_FOUND)
    return records[0]


def _unsubscribe(request, pool, record, redirect_to=None, link=None):
    """Ask on a GET, as it may come from a scanner, and block on a POST

    The RFC 8058 one-click POST gets no page."""
    Record = pool.get('marketing.automation.record')
    with Transaction().set_context(language=_language(record)):
        if request.method != 'POST':
            return pages.unsubscribe_page(record, confirm=not record.blocked)
        one_click = request.form.get('List-Unsubscribe') == ONE_CLICK
        Record.block([record])
        if one_click:
            return Response('', HTTPStatus.OK, content_type='text/plain')
        if redirect_to:
            return redirect(redirect_to, code=HTTPStatus.SEE_OTHER)
        return pages.unsubscribe_page(record, confirm=False, link=link)


def _language(record):
    "The language of the emails of the record, by the same rule"
    party = getattr(record.record, 'marketing_party', None)
    if party:
        return email_.languages({party.id})[party.id]
