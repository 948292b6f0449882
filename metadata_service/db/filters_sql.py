"""A metadata filter compiled to SQL on documents (`filter_clause`), with the
semantics of Chroma's `where`."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    and_,
    exists,
    literal,
    not_,
    or_,
)

from askmojo.common.filters import (
    AllOf,
    AnyOf,
    Condition,
    FilterNode,
    MetadataScalar,
    Op,
    value_kind,
)
from metadata_service.db.models import (
    DocumentRow,
    MetadataRow,
)


def filter_clause(node: FilterNode) -> ColumnElement[bool]:
    """SQL for a metadata filter on DocumentRow, with the semantics of Chroma's
    `where`: NE and NIN also match documents without the key, range operators
    only match numbers, ints and doubles compare as numbers."""
    if isinstance(node, AllOf):
        return and_(*(filter_clause(child) for child in node.filters))
    if isinstance(node, AnyOf):
        return or_(*(filter_clause(child) for child in node.filters))
    return _condition_clause(node)


_POSITIVE = {Op.NE: Op.EQ, Op.NIN: Op.IN}


def _condition_clause(cond: Condition) -> ColumnElement[bool]:
    negated = cond.op in _POSITIVE
    op = _POSITIVE.get(cond.op, cond.op)
    match = exists().where(
        MetadataRow.document_id == DocumentRow.id,
        MetadataRow.key == cond.key,
        _value_match(op, cond.values),
    )
    return not_(match) if negated else match


def _value_match(op: Op, values: Sequence[MetadataScalar]) -> ColumnElement[bool]:
    kind = value_kind(values[0])
    if kind in ("bool", "string"):
        column: Any = MetadataRow.bool_value if kind == "bool" else MetadataRow.string_value
        match: ColumnElement[bool] = column.in_(values) if op is Op.IN else column == values[0]
        return match
    # Numbers live in int_value or float_value and compare exactly, as Python
    # and Chroma compare them. Each column is compared with an operand of its
    # own type, rewritten so the comparison means the same: a backend that
    # mixes bigint and double compares in doubles (PostgreSQL does), where
    # 2**53 + 1 equals 2.0**53.
    if op is Op.IN:
        ints = [i for i in map(_as_int64, values) if i is not None]
        doubles = [d for d in map(_as_double, values) if d is not None]
        return or_(
            MetadataRow.int_value.in_(ints) if ints else literal(False),
            MetadataRow.float_value.in_(doubles) if doubles else literal(False),
        )
    return or_(_int_compare(op, values[0]), _double_compare(op, values[0]))


def _as_int64(value: MetadataScalar) -> int | None:
    """The int64 equal to `value`, or None (2.0 -> 2; 2.5, 2.0**63 -> None)."""
    if isinstance(value, int):
        return value
    number = float(value)
    if number.is_integer() and _INT64_MIN <= number < 2**63:
        return int(number)
    return None


def _as_double(value: MetadataScalar) -> float | None:
    """The double equal to `value`, or None (2**53 + 1 has none)."""
    if isinstance(value, float):
        return value
    number = float(value)
    return number if int(number) == value else None


def _int_compare(op: Op, operand: MetadataScalar) -> ColumnElement[bool]:
    """int_value `op` operand, exactly: a double operand becomes the int bound
    that selects the same ints (x > 2.5 is x > 2, x >= 2.5 is x >= 3)."""
    column = MetadataRow.int_value
    if isinstance(operand, int):
        return _COMPARE[op](column, literal(operand, BigInteger()))
    number = float(operand)
    if op is Op.EQ:
        exact = _as_int64(number)
        return column == literal(exact, BigInteger()) if exact is not None else literal(False)
    if math.isinf(number):
        bound = _INT64_MAX + 1 if number > 0 else _INT64_MIN - 1
    else:  # floor for > and <=, ceil for >= and <: the same ints either side
        bound = math.floor(number) if op in (Op.GT, Op.LTE) else math.ceil(number)
    if bound > _INT64_MAX:  # beyond every int64: all of them below it
        return column.is_not(None) if op in (Op.LT, Op.LTE) else literal(False)
    if bound < _INT64_MIN:
        return column.is_not(None) if op in (Op.GT, Op.GTE) else literal(False)
    return _COMPARE[op](column, literal(bound, BigInteger()))


def _double_compare(op: Op, operand: MetadataScalar) -> ColumnElement[bool]:
    """float_value `op` operand, exactly: an int no double holds becomes the
    double next to it on the side that selects the same doubles."""
    column = MetadataRow.float_value
    number = float(operand)
    if isinstance(operand, float) or int(number) == operand:
        return _COMPARE[op](column, literal(number, Double()))
    if op is Op.EQ:
        return literal(False)  # no double equals it
    # float(operand) rounded to a neighbour; the other is one step away.
    if int(number) > int(operand):
        above, below = number, math.nextafter(number, -math.inf)
    else:
        above, below = math.nextafter(number, math.inf), number
    if op in (Op.GT, Op.GTE):
        return column >= literal(above, Double())
    return column <= literal(below, Double())


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


_COMPARE: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.EQ: operator.eq,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
}
