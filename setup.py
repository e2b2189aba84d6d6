#!/usr/bin/env python3
# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

import io
import os
import re
from configparser import ConfigParser

from setuptools import find_packages, setup

MODULE = 'marketing_automation'
PREFIX = 'trytond'


def read(fname):
    with io.open(
            os.path.join(os.path.dirname(__file__), fname),
            'r', encoding='utf-8') as fp:
        return fp.read()


config = ConfigParser()
config.read_file(open(os.path.join(os.path.dirname(__file__), 'tryton.cfg')))
info = dict(config.items('tryton'))
for key in ('depends', 'extras_depend', 'xml'):
    if key in info:
        info[key] = info[key].strip().splitlines()
version = info.get('version', '0.0.1')
major_version, minor_version, _ = version.split('.', 2)
major_version = int(major_version)
minor_version = int(minor_version)
trytond_range = '>=%s.%s,<%s.%s' % (
    major_version, minor_version, major_version, minor_version + 1)

requires = [
    'babel',
    'genshi',
    'lxml',
    'python-dateutil',
    'python-sql >= 1.8',
    ]
for dep in info.get('depends', []):
    if not re.match(r'(ir|res)(\W|$)', dep):
        requires.append('%s_%s %s' % (PREFIX, dep, trytond_range))
requires.append('trytond %s' % trytond_range)

tests_require = [
    'proteus %s' % trytond_range,
    'trytond_sale %s' % trytond_range,
    'trytond_inbound_email %s' % trytond_range,
    'trytond_web_shortener %s' % trytond_range,
    'aiosmtpd',
    'hypothesis',
    'playwright',
    # The C implementation: the pure Python one costs a third of the CPU
    # of sending
    'psycopg[binary,pool] >= 3.2',
    ]

setup(name='%s_%s' % (PREFIX, MODULE),
    version=version,
    description="Automate marketing campaigns by email in Tryton",
    long_description=read('README.rst'),
    author='marketing_automation contributors',
    license='GPL-3.0-or-later',
    package_dir={'trytond.modules.%s' % MODULE: '.'},
    packages=(
        ['trytond.modules.%s' % MODULE]
        + ['trytond.modules.%s.%s' % (MODULE, p)
            for p in find_packages(exclude=['demo', 'demo.*'])]
        ),
    package_data={
        'trytond.modules.%s' % MODULE: (info.get('xml', [])
            + ['tryton.cfg', 'view/*.xml', 'locale/*.po', 'tests/*.rst',
                'tests/tryton.cfg', 'tests/fixtures/upstream-8.0/*.md',
                'tests/fixtures/upstream-8.0/*/*',
                '*.html']),
        },
    classifiers=[
        'Environment :: Plugins',
        'Framework :: Tryton',
        'Programming Language :: Python :: 3',
        'Topic :: Office/Business',
        ],
    python_requires='>=3.9',
    install_requires=requires,
    extras_require={
        'sale': ['%s_sale %s' % (PREFIX, trytond_range)],
        'web_shortener': ['%s_web_shortener %s' % (PREFIX, trytond_range)],
        # The delivery and abuse reports come in through inbound_email
        'feedback': ['%s_inbound_email %s' % (PREFIX, trytond_range)],
        'postgresql': ['psycopg[binary,pool] >= 3.2'],
        'test': tests_require,
        },
    zip_safe=False,
    entry_points="""
    [trytond.modules]
    %s = trytond.modules.%s
    """ % (MODULE, MODULE),
    )
