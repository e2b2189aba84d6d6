# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The reports that come back: bounces and complaints

Delivery status notifications (RFC 3464) and abuse reports (ARF, RFC 5965)
come in through the inbound_email module, whose rules run the action of
this module on each message. A report names one of our emails by its
return path (bounce+<token>@…) or by the Message-ID of the original that it
quotes.

- A permanent failure marks the address bounced and blocks the record.
- A complaint blocks the record and unsubscribes its party from the
  scenario for good, even when the scenario is not unsubscribable.
- A report that names no email of ours, that does not parse or that
  reports only a delay is kept and ignored, with the reason.

A report that arrives twice has the same effect as one."""
import re
from collections import namedtuple
from email.parser import BytesParser, HeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses

from trytond.model import fields
from trytond.pool import Pool, PoolMeta

from . import bounce

VERP = re.compile(r'\bbounce\+([0-9a-f]{32})@', re.IGNORECASE)
MESSAGE_ID = re.compile(r'<([0-9a-f]{32})@', re.IGNORECASE)
# The headers in which a mail server puts the envelope recipient
RECIPIENT_HEADERS = [
    'To', 'Delivered-To', 'X-Original-To', 'Envelope-To', 'X-Envelope-To']

Report = namedtuple('Report', ['kind', 'tokens', 'failed', 'reason'])


class NotAReport(ValueError):
    pass


def parse(data):
    """Return the Report of the raw message data

    Raise NotAReport when it is not a delivery or a feedback report."""
    message = BytesParser(policy=default_policy).parsebytes(data)
    if message.get_content_type() != 'multipart/report':
        raise NotAReport(message.get_content_type())
    tokens = set()
    for name in RECIPIENT_HEADERS:
        for value in message.get_all(name, []):
            tokens.update(t.lower() for t in VERP.findall(str(value)))
    parts = {p.get_content_type(): p for p in message.iter_parts()}
    original = _original(parts)
    if original is not None:
        for value in original.get_all('Message-ID', []):
            tokens.update(t.lower() for t in MESSAGE_ID.findall(str(value)))
    report_type = (message.get_param('report-type') or '').lower()
    if report_type == 'delivery-status' and 'message/delivery-status' in parts:
        return _delivery(parts['message/delivery-status'], tokens)
    if (report_type == 'feedback-report'
            and 'message/feedback-report' in parts):
        fields_, = parts['message/feedback-report'].get_payload()[:1]
        feedback_type = (fields_.get('Feedback-Type') or 'abuse').strip()
        return Report('complaint', tokens, [], 'Feedback-Type: %s' % (
                feedback_type))
    raise NotAReport(report_type)


def _original(parts):
    "Return the headers of the original message that the report quotes"
    if 'message/rfc822' in parts:
        payload = parts['message/rfc822'].get_payload()
        return payload[0] if payload else None
    if 'text/rfc822-headers' in parts:
        return HeaderParser().parsestr(
            parts['text/rfc822-headers'].get_content(), headersonly=True)


def _delivery(part, tokens):
    "Return the Report of the per-recipient fields of a delivery status"
    failed, reasons = [], []
    # The first block is about the message, the others about recipients
    for block in part.get_payload()[1:]:
        action = (block.get('Action') or '').strip().lower()
        status = (block.get('Status') or '').strip()
        if action != 'failed' or not status.startswith('5'):
            continue
        recipient = block.get('Final-Recipient') or block.get(
            'Original-Recipient') or ''
        _, _, address = str(recipient).partition(';')
        failed.extend(a for _, a in getaddresses([address.strip()]) if a)
        reasons.append(' '.join(str(
                    block.get('Diagnostic-Code') or status).split()))
    if failed:
        return Report('bounce', tokens, failed, '; '.join(reasons))
    return Report('delay', tokens, [], '')


def bounced(email, report):
    "Mark the failed addresses bounced and block the record of email"
    pool = Pool()
    Record = pool.get('marketing.automation.record')
    bounce.bounced(report.failed, report.reason)
    bounce.flag_emails([email.id], 'email_bounced')
    Record.block([email.marketing_automation_record])


def complained(email):
    "Block the record of email and unsubscribe its party for good"
    pool = Pool()
    Party = pool.get('party.party')
    Record = pool.get('marketing.automation.record')
    record = email.marketing_automation_record
    bounce.flag_emails([email.id], 'email_complained')
    Record.block([record])
    # Whether or not the scenario is unsubscribable: a complaint is a
    # stronger no than an unsubscribe
    if record.party:
        Party.write([record.party], {
                'marketing_scenario_unsubscribed': [
                    ('add', [record.scenario.id])],
                })


class InboundEmail(metaclass=PoolMeta):
    __name__ = 'inbound.email'

    marketing_automation_feedback = fields.Char(
        "Marketing Feedback", readonly=True,
        help="What the bounce or the complaint did, or why it was ignored.")


class Rule(metaclass=PoolMeta):
    __name__ = 'inbound.email.rule'

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls.action.selection.append((
                'ir.email|marketing_automation_feedback',
                "Marketing Bounce or Complaint"))
