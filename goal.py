# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"""The exit goal of a scenario: a record that meets it is converted, and
nothing more is sent to it"""
from sql import Null

from trytond.i18n import gettext
from trytond.model import fields
from trytond.pool import Pool, PoolMeta
from trytond.pyson import PYSONDecoder
from trytond.tools import reduce_ids
from trytond.transaction import Transaction

from .batch import batch_size
from .exceptions import GoalError
from .marketing_automation import current_time
from .mixin import by_company, company_context
from .states import forget


def invalid_goal(scenario, exception):
    "Return the error of the goal of scenario that fails"
    return GoalError(gettext(
            'marketing_automation.msg_scenario_invalid_goal',
            scenario=scenario.rec_name, exception=exception))


class Scenario(metaclass=PoolMeta):
    __name__ = 'marketing.automation.scenario'

    goal = fields.Char(
        "Goal",
        help="A domain on the records: a record that matches it is "
        "converted, and its waiting activities are cancelled.\n"
        "Leave empty for no goal.")

    @classmethod
    def __setup__(cls):
        super().__setup__()
        cls._domains['goal'] = invalid_goal

    @property
    def pyson_goal(self):
        if self.goal:
            return PYSONDecoder({}).decode(self.goal)

    @classmethod
    def check_goals(cls, scenarios=None):
        "Convert the records of the running scenarios that met their goal"
        if scenarios is None:
            scenarios = cls.search([
                    ('state', '=', 'running'),
                    ('goal', '!=', None),
                    ])
        count = 0
        for scenario in scenarios:
            if scenario.state == 'running' and scenario.goal:
                count += scenario.convert_records()
        return count

    def convert_records(self):
        """Convert by batches the records that meet the goal and return how
        many"""
        pool = Pool()
        Model = pool.get(self.model)
        Record = pool.get('marketing.automation.record')
        record = Record.__table__()
        cursor = Transaction().connection.cursor()
        goal, prefix = self.pyson_goal, self.model + ','
        last, count = 0, 0
        while True:
            # Walk by ids, as the conversions change what is left
            cursor.execute(*record.select(record.id, record.record,
                    where=(record.scenario == self.id)
                    & (record.converted == Null)
                    & (record.id > last),
                    order_by=[record.id.asc], limit=batch_size()))
            rows = cursor.fetchall()
            if not rows:
                break
            last = rows[-1][0]
            by_resource = {
                int(r[len(prefix):]): i for i, r in rows
                if r and r.startswith(prefix)}
            converted = []
            # The goal is met in the company of each record
            for company, ids in by_company(Model, by_resource).items():
                with Transaction().set_context(company_context(company)):
                    met = Model.search([
                            goal, ('id', 'in', sorted(ids)),
                            ], order=[])
                converted.extend(by_resource[m.id] for m in met)
            Record.convert(converted)
            count += len(converted)
        return count


class Record(metaclass=PoolMeta):
    __name__ = 'marketing.automation.record'

    converted = fields.DateTime(
        "Converted", readonly=True,
        help="When the record met the goal of the scenario.")

    @classmethod
    def convert(cls, record_ids):
        """Mark the records as converted now and cancel their waiting
        activities"""
        pool = Pool()
        RecordActivity = pool.get('marketing.automation.record.activity')
        if not record_ids:
            return
        table = cls.__table__()
        transaction = Transaction()
        cursor = transaction.connection.cursor()
        now = current_time()
        cursor.execute(*table.update(
                [table.converted, table.write_uid, table.write_date],
                [now, transaction.user, now],
                where=reduce_ids(table.id, record_ids)
                & (table.converted == Null)))
        RecordActivity.cancel_waiting(record_ids)
        forget(cls.__name__, record_ids)

    @classmethod
    def copy(cls, records, default=None):
        default = default.copy() if default is not None else {}
        default.setdefault('converted')
        return super().copy(records, default=default)
