# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The rules of the activity tree, which the run, the routes and the test
mode share"""
import unittest
from collections import namedtuple

from trytond.modules.marketing_automation import tree

Child = namedtuple('Child', ['id', 'parent', 'event', 'negative'])

PLAIN = Child(1, 'a', None, False)
OPENED = Child(2, 'a', 'email_opened', False)
NOT_OPENED = Child(3, 'a', 'email_opened', True)
CLICKED = Child(4, 'a', 'email_clicked', False)
OTHER_OPENED = Child(5, 'b', 'email_opened', False)


class TreeTestCase(unittest.TestCase):
    "The rules of the activity tree"

    def test_waits_for_event(self):
        "Only a positive child on an event waits for it with no date"
        self.assertEqual(
            [c.id for c in [PLAIN, OPENED, NOT_OPENED, CLICKED]
                if tree.waits_for_event(c)],
            [2, 4])

    def test_moved_on(self):
        "An event makes its positive children due and cancels its negative"
        children = [PLAIN, OPENED, NOT_OPENED, CLICKED]
        self.assertEqual(
            tree.moved_on(children, {'email_opened'}),
            ([OPENED], [NOT_OPENED]))
        self.assertEqual(
            tree.moved_on(children, {'email_opened', 'email_clicked'}),
            ([OPENED, CLICKED], [NOT_OPENED]))
        self.assertEqual(tree.moved_on(children, set()), ([], []))

    def test_timed_out(self):
        """A negative child that runs cancels the positive siblings on its
        event, of its parent only"""
        siblings = [PLAIN, OPENED, NOT_OPENED, CLICKED, OTHER_OPENED]
        self.assertEqual(tree.timed_out([NOT_OPENED], siblings), [OPENED])
        self.assertEqual(tree.timed_out([OPENED], siblings), [])
