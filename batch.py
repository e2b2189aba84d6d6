# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.
"How the work is cut: batches of records and slices of query parameters"
import trytond.config as config
from trytond import backend
from trytond.tools import grouped_slice

# browse() and create() are quadratic in the length of their list
BATCH_SIZE = 500


def batch_size():
    return config.getint(
        'marketing', 'automation_batch_size', default=BATCH_SIZE)


def sliced(values):
    "Slice values to fit the parameters of one query"
    return grouped_slice(values, backend.MAX_QUERY_PARAMS)


def sliced_rows(rows, width):
    "Slice rows to insert to fit the variables of one statement"
    # MAX_QUERY_PARAMS of SQLite is about the depth of expressions, which
    # VALUES does not nest
    limit = 32_000 if backend.name == 'sqlite' else backend.MAX_QUERY_PARAMS
    return grouped_slice(rows, max(min(limit // width, 1000), 1))
