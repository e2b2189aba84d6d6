# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The links of the emails: open image, click redirect and unsubscribe

A URL carries only the database name and unguessable tokens. Bad input is
answered with 4xx and changes nothing."""
import base64
import datetime as dt
import logging
import re
import threading
import time
import types
from collections import OrderedDict, defaultdict
from functools import wraps

from werkzeug.exceptions import HTTPException

import trytond.config as config
from trytond import backend
from trytond.pool import Pool
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
def email_open(request, pool, token):
    flag = {
        scanner.PERSON: 'opened',
        scanner.MACHINE: 'opened_machine',
        }.get(scanner.classify(request), 'filtered')
    if _track(pool, token, lambda tracked: flag) is None:
        return pixel(status=HTTPStatus.NOT_FOUND)
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


@app.route('/m/<database_name>/c/<token>/<key>', methods={'GET', 'HEAD'})
@public
@tracking()
@with_pool
def email_click(request, pool, token, key):
    person = scanner.classify(request) == scanner.PERSON

    def flag(tracked):
        if not _target(tracked, key):
            return None
        early = (not tracked.sent_at
            or current_time() < tracked.sent_at + click_delay())
        return 'clicked' if person and not early else 'filtered'
    target = _target(_track(pool, token, flag), key)
    if not target:
        abort(HTTPStatus.NOT_FOUND)
    # Every caller is sent on, only the counting differs
    return redirect(target, code=HTTPStatus.FOUND)


def _target(tracked, key):
    "Return the target of the link key of the email tracked, if it can go"
    target = email_.target(tracked.links, key) if tracked else None
    if target and email_.redirectable(target):
        return target


def _track(pool, token, flag):
    """Record the event of a tracked request on the email of token and
    return what is known of the email, or None for an unknown token

    flag(tracked) names the flag of Tracked that the event sets, or None.
    A repeat is answered from what the process remembers, or else from a
    read-only transaction: only a first event writes."""
    tracked = _remembered.get(pool.database_name, token)
    if tracked:
        name = flag(tracked)
        if name is None or getattr(tracked, name):
            return tracked
    return _hits(pool.database_name, (token, flag))


class Memory:
    """What a process learnt of the emails of the tracked requests, by
    database and token, so that a repeat needs no database

    It keeps only what can never change back: an email delivered keeps its
    record activity, its links and its time of sending, and its flags are
    only ever set. A flag not set here may be set in the database by now,
    so it is read again. Bounded in size, and in age so that an email
    deleted since, with its scenario, is soon unknown again."""

    def __init__(self, size=10000, age=300):
        self.size, self.age = size, age
        self._lock = threading.Lock()
        self._facts = OrderedDict()

    def get(self, database_name, token):
        key = (database_name, token)
        with self._lock:
            tracked, until = self._facts.get(key, (None, 0))
            if tracked and until < time.monotonic():
                del self._facts[key]
                return None
            return tracked

    def add(self, database_name, token, tracked):
        if tracked.state != 'done' or not tracked.sent_at:
            return
        key = (database_name, token)
        with self._lock:
            self._facts[key] = (tracked, time.monotonic() + self.age)
            self._facts.move_to_end(key)
            while len(self._facts) > self.size:
                self._facts.popitem(last=False)

    def clear(self):
        with self._lock:
            self._facts.clear()


_remembered = Memory()


class Batches:
    """Run the work of the tracked requests that wait at the same time for
    the same database in one call, for one transaction

    The first request to come does the work of all those that wait, while
    the next ones gather for the following transaction, led by the first of
    them: under load a transaction serves many requests, alone a request
    waits for nobody. Each request waits on its own event, so only the
    requests served wake up."""

    def __init__(self, work):
        self.work = work
        self._lock = threading.Lock()
        self._waiting = defaultdict(list)
        self._busy = set()

    def __call__(self, database_name, item):
        hit = types.SimpleNamespace(item=item, done=False, result=None,
            error=None, ready=threading.Event())
        with self._lock:
            waiting = self._waiting[database_name]
            lead = database_name not in self._busy
            if lead:
                self._busy.add(database_name)
            else:
                waiting.append(hit)
        if not lead:
            hit.ready.wait()
        if not hit.done:
            with self._lock:
                batch = [hit] + waiting
                waiting.clear()
            try:
                results = self.work(database_name, [h.item for h in batch])
                for other, result in zip(batch, results):
                    other.result = result
            except Exception as exception:
                for other in batch:
                    other.error = exception
            finally:
                with self._lock:
                    if waiting:
                        following = waiting.pop(0)
                    else:
                        following = None
                        self._busy.discard(database_name)
                for other in batch:
                    other.done = True
                    other.ready.set()
                if following:
                    following.ready.set()
        if hit.error:
            raise hit.error
        return hit.result


@Batches
def _hits(database_name, hits):
    """Look the tokens of the hits, as (token, flag), up in a read-only
    transaction, then record their first events in one that writes

    Return what is known of the email of each hit, or None."""
    with Transaction().start(database_name, 0, readonly=True):
        found = email_.lookup({token for token, _ in hits})
    events, result = [], []
    for token, flag in hits:
        tracked = found.get(token)
        if tracked and tracked.state == 'done':
            name = flag(tracked)
            if name and not getattr(tracked, name):
                events.append((tracked, name))
                tracked = tracked._replace(**{name: True}, **(
                        {'opened': True} if name == 'clicked' else {}))
        result.append(tracked)
    if events:
        _record_events(database_name, events)
    for (token, _), tracked in zip(hits, result):
        if tracked:
            _remembered.add(database_name, token, tracked)
    return result


def _record_events(database_name, events):
    """Record the events, as (tracked, flag name), in one transaction,
    retried as trytond does on a conflict

    Their statements only change the rows that miss the flag or wait for
    the event, so the same first event recorded twice, by two processes,
    changes nothing the second time."""
    pool = Pool(database_name)
    RecordActivity = pool.get('marketing.automation.record.activity')
    by_flag = defaultdict(dict)
    for tracked, name in events:
        by_flag[name][tracked.record_activity] = tracked
    retry = config.getint('database', 'retry')
    for count in range(retry + 1):
        if count:
            time.sleep(0.02 * count)
        with Transaction().start(database_name, 0) as transaction:
            try:
                for name, tracked in by_flag.items():
                    tracked = list(tracked.values())
                    if name in {'opened', 'clicked'}:
                        RecordActivity.record_email_events(
                            [_event(t) for t in tracked], opened=True,
                            clicked=name == 'clicked', route=True)
                    else:
                        RecordActivity.set_email_flags(
                            RecordActivity.browse(
                                [t.record_activity for t in tracked]),
                            'email_' + name, route=True)
                transaction.commit()
            except backend.DatabaseOperationalError:
                if count < retry:
                    transaction.rollback()
                    continue
                raise
        return


def _event(tracked):
    return Event(
        tracked.record_activity, tracked.activity, tracked.record,
        tracked.opened, tracked.clicked)


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
