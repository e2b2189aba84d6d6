# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

from trytond.exceptions import UserError, UserWarning
from trytond.model.exceptions import AccessError, ValidationError


class DomainError(ValidationError):
    pass


class ConditionError(ValidationError):
    pass


class TemplateError(ValidationError):
    pass


class EventError(ValidationError):
    pass


class DelayError(ValidationError):
    pass


class WindowError(ValidationError):
    pass


class GoalError(ValidationError):
    pass


class ScenarioModelError(ValidationError):
    pass


class BlockedError(AccessError):
    pass


class TestAddressError(UserError):
    pass


class RunError(UserError):
    pass


class RetryError(UserError):
    pass


class RetryWarning(UserWarning):
    pass


class PreviewError(UserError):
    pass
