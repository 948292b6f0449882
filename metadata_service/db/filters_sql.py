"""A metadata filter compiled to SQL on documents (`filter_clause`), with the
semantics of Chroma's `where`."""

from __future__ import annotations

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
    # Numbers live in int_value or float_value; compare against both, binding
    # the operand with its own type so no backend truncates 2.5 to 2.
    if op is Op.IN:
        # A whole double (2.0) also matches the int 2; one outside int64 cannot.
        numbers = [float(v) for v in values]  # the kind check made them all numbers
        ints = [
            int(v)  # ints stay exact; a whole double becomes the int it equals
            for v in values
            if isinstance(v, int) or (float(v).is_integer() and _INT64_MIN <= float(v) < 2**63)
        ]
        return or_(
            MetadataRow.int_value.in_(ints) if ints else literal(False),
            MetadataRow.float_value.in_(numbers),
        )
    operand = literal(values[0], Double() if isinstance(values[0], float) else BigInteger())
    compare = _COMPARE[op]
    return or_(compare(MetadataRow.int_value, operand), compare(MetadataRow.float_value, operand))


_INT64_MIN = -(2**63)


_COMPARE: dict[Op, Callable[[Any, Any], ColumnElement[bool]]] = {
    Op.EQ: operator.eq,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
}
