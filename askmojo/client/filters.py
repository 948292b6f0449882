"""`where` filters from plain Python, in Chroma's spelling, and small builders.

    {"lang": "en"}                                   lang == "en"
    {"year": {"$gte": 2020, "$lt": 2025}}            both comparisons hold
    {"year": {"$gte": 2020}, "lang": "en"}           several keys: all hold
    {"$or": [{"lang": "en"}, {"lang": "fr"}]}        at least one holds
    {"$and": [...]}, {"$not": {...}}                 all hold / it does not hold
    {"tag": {"$in": ["a", "b"]}}, {"$nin": [...]}    one of / none of

Operators: $eq $ne $gt $gte $lt $lte $in $nin on a key; $and $or $not at any
level. The builders (`eq`, `gte`, `in_`, `and_`, `or_`, `not_`, ...) return the
same dictionaries, so both spellings mix freely. Either compiles to the proto
`askmojo.common.v1.Filter` (a ready-made `Filter` message is accepted as is);
a filter the services would refuse raises `InvalidFilter` here, before any call,
naming the offending part, e.g. `where["year"]["$gte"]`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from askmojo.client.errors import InvalidFilter, Violation
from askmojo.common.filters import (
    METADATA_KEY_PATTERN,
    METADATA_KEY_RULE,
    InvalidFilterError,
    MetadataScalar,
    filter_from_proto,
    metadata_value_to_proto,
    value_kind,
)
from askmojo.common.v1 import common_pb2

#: What a `where=` argument may be: a Chroma-style dictionary, a proto
#: `Filter`, or None for no filter.
Where: TypeAlias = Mapping[str, Any] | common_pb2.Filter

_OPERATORS = {
    "$eq": common_pb2.OPERATOR_EQ,
    "$ne": common_pb2.OPERATOR_NE,
    "$gt": common_pb2.OPERATOR_GT,
    "$gte": common_pb2.OPERATOR_GTE,
    "$lt": common_pb2.OPERATOR_LT,
    "$lte": common_pb2.OPERATOR_LTE,
    "$in": common_pb2.OPERATOR_IN,
    "$nin": common_pb2.OPERATOR_NIN,
}
_LIST_OPERATORS = frozenset({"$in", "$nin"})
_RANGE_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_LOGICAL = frozenset({"$and", "$or", "$not"})
_INT64 = (-(2**63), 2**63 - 1)


def compile_where(where: Where | None, field: str = "where") -> common_pb2.Filter | None:
    """The proto Filter for `where` (None for None); raises InvalidFilter.

    The result is also checked with the services' own parser, so anything
    they would refuse (a `$not` of a range comparison, say) fails here."""
    if where is None:
        return None
    if isinstance(where, common_pb2.Filter):
        proto = where
    elif isinstance(where, Mapping):
        proto = _compile(where, field)
    else:
        raise _invalid(field, f"expected a dict or a Filter, got {type(where).__name__}")
    try:
        filter_from_proto(proto, field)
    except InvalidFilterError as exc:
        raise _invalid(exc.field, exc.description) from None
    return proto


def _invalid(field: str, description: str) -> InvalidFilter:
    return InvalidFilter(f"{field}: {description}", violations=[Violation(field, description)])


def _compile(where: Mapping[str, Any], field: str) -> common_pb2.Filter:
    if not where:
        raise _invalid(field, "an empty filter; pass where=None for no filter")
    parts: list[common_pb2.Filter] = []
    for key, operand in where.items():
        if not isinstance(key, str):
            raise _invalid(field, f"keys must be strings, got {key!r}")
        here = f'{field}["{key}"]'
        if key in _LOGICAL:
            parts.append(_logical(key, operand, here))
        elif key.startswith("$"):
            raise _invalid(here, f"unknown operator {key!r} here; use $and, $or, $not or a key")
        else:
            parts.extend(_conditions(key, operand, here))
    return _all(parts)


def _all(parts: Sequence[common_pb2.Filter]) -> common_pb2.Filter:
    if len(parts) == 1:
        return parts[0]
    return common_pb2.Filter(all=common_pb2.FilterList(filters=list(parts)))


def _logical(op: str, operand: Any, field: str) -> common_pb2.Filter:
    if op == "$not":
        if not isinstance(operand, Mapping):
            raise _invalid(field, "$not takes one filter (a dict)")
        negated = common_pb2.Filter()
        getattr(negated, "not").CopyFrom(_compile(operand, field))
        return negated
    if isinstance(operand, str | bytes | Mapping) or not isinstance(operand, Sequence):
        raise _invalid(field, f"{op} takes a list of filters")
    if not operand:
        raise _invalid(field, f"{op} needs at least one filter")
    children = []
    for i, child in enumerate(operand):
        if not isinstance(child, Mapping):
            raise _invalid(f"{field}[{i}]", "each filter is a dict")
        children.append(_compile(child, f"{field}[{i}]"))
    filters = common_pb2.FilterList(filters=children)
    return common_pb2.Filter(all=filters) if op == "$and" else common_pb2.Filter(any=filters)


def _conditions(key: str, operand: Any, field: str) -> list[common_pb2.Filter]:
    if not METADATA_KEY_PATTERN.fullmatch(key):
        raise _invalid(field, f"a metadata key is {METADATA_KEY_RULE}")
    if not isinstance(operand, Mapping):
        return [_condition(key, "$eq", operand, field)]
    if not operand:
        raise _invalid(field, 'an empty operator dict; e.g. {"$eq": value}')
    found = []
    for op, value in operand.items():
        if op not in _OPERATORS:
            known = " ".join(_OPERATORS)
            raise _invalid(field, f"unknown operator {op!r}; one of {known}")
        found.append(_condition(key, op, value, f'{field}["{op}"]'))
    return found


def _condition(key: str, op: str, operand: Any, field: str) -> common_pb2.Filter:
    if op in _LIST_OPERATORS:
        if isinstance(operand, str | bytes | Mapping) or not isinstance(operand, Sequence):
            raise _invalid(field, f"{op} takes a list of values")
        if not operand:
            raise _invalid(field, f"{op} needs at least one value")
        values = [_scalar(v, f"{field}[{i}]") for i, v in enumerate(operand)]
        if len({value_kind(v) for v in values}) > 1:
            raise _invalid(field, f"the values of {op} must all be of one type")
        condition = common_pb2.Condition(
            key=key,
            op=_OPERATORS[op],
            values=[metadata_value_to_proto(v) for v in values],
        )
    else:
        value = _scalar(operand, field)
        if op in _RANGE_OPERATORS and value_kind(value) != "number":
            raise _invalid(field, f"{op} compares numbers only, got {type(value).__name__}")
        condition = common_pb2.Condition(
            key=key, op=_OPERATORS[op], value=metadata_value_to_proto(value)
        )
    return common_pb2.Filter(condition=condition)


def _scalar(value: Any, field: str) -> MetadataScalar:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise _invalid(field, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(field, "numbers must be finite")
        return value
    raise _invalid(field, f"values are str, int, float or bool, got {type(value).__name__}")


# --- builders -----------------------------------------------------------------
# Each returns the Chroma-style dictionary, so they nest inside plain dicts
# and plain dicts nest inside them.


def eq(key: str, value: MetadataScalar) -> dict[str, Any]:
    """`key == value`."""
    return {key: {"$eq": value}}


def ne(key: str, value: MetadataScalar) -> dict[str, Any]:
    """`key != value` (also true of items without the key)."""
    return {key: {"$ne": value}}


def gt(key: str, value: float) -> dict[str, Any]:
    """`key > value` (numbers)."""
    return {key: {"$gt": value}}


def gte(key: str, value: float) -> dict[str, Any]:
    """`key >= value` (numbers)."""
    return {key: {"$gte": value}}


def lt(key: str, value: float) -> dict[str, Any]:
    """`key < value` (numbers)."""
    return {key: {"$lt": value}}


def lte(key: str, value: float) -> dict[str, Any]:
    """`key <= value` (numbers)."""
    return {key: {"$lte": value}}


def in_(key: str, values: Sequence[MetadataScalar]) -> dict[str, Any]:
    """`key` equals one of `values` (all of one type)."""
    return {key: {"$in": list(values)}}


def nin(key: str, values: Sequence[MetadataScalar]) -> dict[str, Any]:
    """`key` equals none of `values` (also true of items without the key)."""
    return {key: {"$nin": list(values)}}


def and_(*filters: Mapping[str, Any]) -> dict[str, Any]:
    """Every filter holds."""
    return {"$and": [dict(f) for f in filters]}


def or_(*filters: Mapping[str, Any]) -> dict[str, Any]:
    """At least one filter holds."""
    return {"$or": [dict(f) for f in filters]}


def not_(where: Mapping[str, Any]) -> dict[str, Any]:
    """The filter does not hold. The services refuse the negation of a range
    comparison (ambiguous for items without the key): write the complement."""
    return {"$not": dict(where)}
