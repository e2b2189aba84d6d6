# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The floor: what sending N e-mails costs with no database at all

Render the template once compiled for each recipient, build the MIME
message (HTML part, text part made from the HTML with lxml, headers) and
hand it to the SMTP sink over one persistent connection."""
import argparse
import os
import smtplib
import sys
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid

from genshi.template import MarkupTemplate, NewTextTemplate
from lxml import html as lxml_html

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    EMAIL_FROM, TEMPLATE, TITLE, SMTPCount, Step, emit)


class Recipient:

    def __init__(self, i):
        self.name = 'Party %07d' % i
        self.email = 'party%07d@example.com' % i


def html_to_text(content):
    document = lxml_html.document_fromstring(content)
    for element in document.xpath('//head|//img'):
        element.drop_tree()
    for link in document.iter('a'):
        link.tail = ' <%s>%s' % (link.get('href'), link.tail or '')
    lines = (' '.join(line.split())
        for line in document.text_content().splitlines())
    return '\n'.join(line for line in lines if line) + '\n'


def run(size, port, count_file):
    smtp_count = SMTPCount(count_file)
    title = NewTextTemplate(TITLE)
    template = MarkupTemplate(TEMPLATE)
    recipients = [Recipient(i) for i in range(size)]
    with Step('floor', smtp_count) as step:
        server = smtplib.SMTP('127.0.0.1', port)
        for recipient in recipients:
            subject = title.generate(record=recipient).render(encoding=None)
            body = template.generate(record=recipient).render(
                method='html', encoding=None)
            message = EmailMessage()
            message['From'] = EMAIL_FROM
            message['To'] = formataddr((recipient.name, recipient.email))
            message['Subject'] = subject
            message['Date'] = formatdate(localtime=True)
            message['Message-ID'] = make_msgid(domain='example.com')
            message.set_content(html_to_text(body), subtype='plain')
            message.add_alternative(body, subtype='html')
            server.sendmail(
                'bench@example.com', [recipient.email],
                message.as_bytes(policy=SMTP))
        server.quit()
        # The sink counts at the end of each SMTP transaction
        deadline = time.time() + 10
        while smtp_count() - step.emails0 < size and time.time() < deadline:
            time.sleep(0.001)
    result = step.result(size=size)
    result['ms_per_email'] = round(1000 * step.seconds / size, 4)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--size', type=int, required=True)
    parser.add_argument('--smtp-port', type=int, required=True)
    parser.add_argument('--count-file', required=True)
    options = parser.parse_args()
    emit(run(options.size, options.smtp_port, options.count_file))


if __name__ == '__main__':
    main()
