"""Typed metadata values and filters shared by both services.

The proto `Filter` is parsed once into a small normalised tree (`Condition`,
`AllOf`, `AnyOf`) with negation already pushed down to the leaves. The metadata
service compiles that tree to SQL and the vector service to a Chroma `where`,
so both sides give a filter exactly the same meaning. Everything here is pure.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from askmojo.common.echo import quoted
from askmojo.common.v1 import common_pb2

# bool is listed first on purpose: bool is a subclass of int in Python, so
# every type test below checks bool before int.
MetadataScalar = bool | int | float | str

METADATA_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
METADATA_KEY_RULE = "1 to 64 characters of A-Z a-z 0-9 _ . -"
# No stored string value can be longer, so no filter operand needs to be.
MAX_STRING_BYTES = 65536

# How wide a filter may be. SQLite (the metadata database, and Chroma's own
# metadata store) refuses an expression nested past 1000 levels and a flat
# `any`/`all` of N conditions is N levels deep there: Chroma 1.5 answered
# "Expression tree is too large" from ~1000 conditions (800 passed) and
# crashed the process past a few thousand. Its `$in` binds two SQL variables
# per number (one per string) and SQLite takes 32766, so ~16,380 numbers
# failed ("too many SQL variables"); the metadata service also binds up to two
# per number (PostgreSQL takes 65535). The ceilings keep every backend at half
# of what it takes or less; settings may only lower them.
FILTER_CONDITIONS_CEILING = 512
FILTER_VALUES_CEILING = 8192
DEFAULT_MAX_FILTER_CONDITIONS = 256
DEFAULT_MAX_FILTER_VALUES = 4096


class InvalidFilterError(ValueError):
    """A filter that cannot be evaluated; `field` is a dotted path into it."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class FilterLimits:
    """How wide a filter may be: conditions in the whole tree, and IN/NIN
    values summed over it (which bounds one list too)."""

    max_conditions: int = FILTER_CONDITIONS_CEILING
    max_values: int = FILTER_VALUES_CEILING


class Op(enum.Enum):
    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    NIN = "nin"


RANGE_OPS = frozenset({Op.GT, Op.GTE, Op.LT, Op.LTE})
LIST_OPS = frozenset({Op.IN, Op.NIN})
_NEGATION = {Op.EQ: Op.NE, Op.NE: Op.EQ, Op.IN: Op.NIN, Op.NIN: Op.IN}
_FROM_PROTO_OP = {
    common_pb2.OPERATOR_EQ: Op.EQ,
    common_pb2.OPERATOR_NE: Op.NE,
    common_pb2.OPERATOR_GT: Op.GT,
    common_pb2.OPERATOR_GTE: Op.GTE,
    common_pb2.OPERATOR_LT: Op.LT,
    common_pb2.OPERATOR_LTE: Op.LTE,
    common_pb2.OPERATOR_IN: Op.IN,
    common_pb2.OPERATOR_NIN: Op.NIN,
}


def value_kind(value: MetadataScalar) -> str:
    """'bool', 'number' or 'string': the classes a comparison may mix within."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


@dataclass(frozen=True)
class Condition:
    """`key op values`; EQ/NE/range ops hold exactly one value."""

    key: str
    op: Op
    values: tuple[MetadataScalar, ...]

    @property
    def value(self) -> MetadataScalar:
        return self.values[0]


@dataclass(frozen=True)
class AllOf:
    filters: tuple[FilterNode, ...]


@dataclass(frozen=True)
class AnyOf:
    filters: tuple[FilterNode, ...]


FilterNode = Condition | AllOf | AnyOf


def metadata_value_from_proto(value: common_pb2.MetadataValue) -> MetadataScalar | None:
    """The Python value of a MetadataValue, or None when no kind is set."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: MetadataScalar = getattr(value, kind)
    return result


def metadata_value_to_proto(value: MetadataScalar) -> common_pb2.MetadataValue:
    if isinstance(value, bool):
        return common_pb2.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.MetadataValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.MetadataValue(double_value=value)
    return common_pb2.MetadataValue(string_value=value)


def metadata_to_proto(
    metadata: Mapping[str, MetadataScalar],
) -> dict[str, common_pb2.MetadataValue]:
    return {key: metadata_value_to_proto(value) for key, value in metadata.items()}


_TO_PROTO_OP = {op: proto for proto, op in _FROM_PROTO_OP.items()}


def filter_to_proto(node: FilterNode) -> common_pb2.Filter:
    """The wire form of a (parsed) filter: the metadata service hands the
    filters it builds or received to the vector service this way."""
    if isinstance(node, AllOf):
        return common_pb2.Filter(
            all=common_pb2.FilterList(filters=[filter_to_proto(f) for f in node.filters])
        )
    if isinstance(node, AnyOf):
        return common_pb2.Filter(
            any=common_pb2.FilterList(filters=[filter_to_proto(f) for f in node.filters])
        )
    values = [metadata_value_to_proto(v) for v in node.values]
    condition = (
        common_pb2.Condition(key=node.key, op=_TO_PROTO_OP[node.op], values=values)
        if node.op in LIST_OPS
        else common_pb2.Condition(key=node.key, op=_TO_PROTO_OP[node.op], value=values[0])
    )
    return common_pb2.Filter(condition=condition)


def check_metadata(
    metadata: Mapping[str, MetadataScalar | None],
    *,
    max_keys: int,
    max_string_bytes: int,
    field: str,
    reserved_prefix: str | None = None,
) -> dict[str, MetadataScalar]:
    """Validates record metadata (None values are kinds the client left unset);
    raises InvalidFilterError naming e.g. `documents[2].metadata['year']`."""
    if len(metadata) > max_keys:
        raise InvalidFilterError(
            field, f"{len(metadata)} metadata keys; the limit is {max_keys} (MAX_METADATA_KEYS)"
        )
    checked: dict[str, MetadataScalar] = {}
    for key, value in metadata.items():
        where = f"{field}[{quoted(key)}]"
        if not METADATA_KEY_PATTERN.fullmatch(key):
            raise InvalidFilterError(where, f"metadata key must be {METADATA_KEY_RULE}")
        if reserved_prefix and key.startswith(reserved_prefix):
            raise InvalidFilterError(
                where,
                f"metadata keys starting with {reserved_prefix!r} are reserved for the service",
            )
        if value is None:
            raise InvalidFilterError(
                where, "set one of string_value, int_value, double_value, bool_value"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidFilterError(where, "double_value must be finite")
        if isinstance(value, str):
            size = len(value.encode())
            if size > max_string_bytes:
                raise InvalidFilterError(
                    where,
                    f"string value is {size} bytes; the limit is {max_string_bytes} "
                    "(MAX_METADATA_STRING_BYTES)",
                )
            if "\x00" in value:
                raise InvalidFilterError(where, "string value must not contain NUL")
        checked[key] = value
    return checked


def filter_from_proto(
    proto: common_pb2.Filter,
    field: str = "filter",
    max_depth: int = 16,
    limits: FilterLimits = FilterLimits(),
) -> FilterNode:
    """Validates a proto filter and returns its normalised tree.

    Raises InvalidFilterError naming the offending field, e.g.
    `filter.all.filters[1].condition.value`. The default `limits` are the
    ceilings no backend must see exceeded; each service also checks its own
    (lower) settings before a request reaches a servicer (`askmojo.common.rpc`).
    """
    check_filter_size(proto, limits, field, max_depth)
    return _parse(proto, field, negate=False, depth=max_depth)


def check_filter_size(
    proto: common_pb2.Filter, limits: FilterLimits, field: str = "filter", max_depth: int = 16
) -> None:
    """Refuses a filter wider than `limits` before any tree is built.

    Cheap: a walk over the proto that never goes deeper than `max_depth` (the
    parser refuses deeper ones) and stops counting once far past the limit,
    so a huge message costs little more than its decoding did.
    """
    conditions = values = visited = 0
    # Far past the limit the exact count tells a client nothing more.
    visit_budget = 64 * (limits.max_conditions + 1)
    stack: list[tuple[common_pb2.Filter, int]] = [(proto, max_depth)]
    while stack:
        node, depth = stack.pop()
        visited += 1
        if visited > visit_budget:
            break
        kind = node.WhichOneof("kind")
        if kind in {"all", "any"}:
            if depth > 1:
                stack.extend((child, depth - 1) for child in getattr(node, kind).filters)
        elif kind == "not":
            if depth > 1:
                stack.append((getattr(node, "not"), depth - 1))
        else:  # a condition (or an empty node, which the parser refuses)
            conditions += 1
            if kind == "condition":
                values += len(node.condition.values)
    more = "more than " if stack else ""
    if conditions > limits.max_conditions:
        raise InvalidFilterError(
            field,
            f"filter has {more}{conditions} conditions; at most {limits.max_conditions} "
            "allowed (MAX_FILTER_CONDITIONS)",
        )
    if values > limits.max_values:
        raise InvalidFilterError(
            field,
            f"filter has {more}{values} IN/NIN values; at most {limits.max_values} "
            "allowed (MAX_FILTER_VALUES)",
        )


def _parse(proto: common_pb2.Filter, field: str, *, negate: bool, depth: int) -> FilterNode:
    if depth <= 0:
        raise InvalidFilterError(field, "filter is nested too deeply")
    kind = proto.WhichOneof("kind")
    if kind is None:
        raise InvalidFilterError(field, "set one of condition, all, any or not")
    if kind == "not":
        return _parse(getattr(proto, "not"), f"{field}.not", negate=not negate, depth=depth - 1)
    if kind == "condition":
        return _parse_condition(proto.condition, f"{field}.condition", negate=negate)
    items = getattr(proto, kind).filters
    if not items:
        raise InvalidFilterError(f"{field}.{kind}.filters", f"'{kind}' needs at least one filter")
    children = tuple(
        _parse(item, f"{field}.{kind}.filters[{i}]", negate=negate, depth=depth - 1)
        for i, item in enumerate(items)
    )
    # De Morgan: NOT (a AND b) == (NOT a) OR (NOT b), and the other way round.
    conjunctive = (kind == "all") != negate
    return AllOf(children) if conjunctive else AnyOf(children)


def _parse_condition(proto: common_pb2.Condition, field: str, *, negate: bool) -> Condition:
    if not METADATA_KEY_PATTERN.fullmatch(proto.key):
        raise InvalidFilterError(
            f"{field}.key", f"key {quoted(proto.key)} must be {METADATA_KEY_RULE}"
        )
    op = _FROM_PROTO_OP.get(proto.op)
    if op is None:
        raise InvalidFilterError(f"{field}.op", "set op to one of EQ NE GT GTE LT LTE IN NIN")
    if op in LIST_OPS:
        values = _parse_values(proto, field)
    else:
        if proto.values:
            raise InvalidFilterError(
                f"{field}.values", f"{op.name} takes one `value`; `values` is for IN and NIN"
            )
        values = (_parse_value(proto.value, f"{field}.value", present=proto.HasField("value")),)
    kinds = {value_kind(v) for v in values}
    if op in RANGE_OPS and kinds != {"number"}:
        raise InvalidFilterError(
            f"{field}.value",
            f"{op.name} compares numbers only, got a {kinds.pop()}; use EQ, NE, IN or NIN",
        )
    if negate:
        if op in RANGE_OPS:
            raise InvalidFilterError(
                field,
                f"'not' of {op.name} is ambiguous for items without key {proto.key!r}; "
                "write the complementary comparison instead",
            )
        op = _NEGATION[op]
    return Condition(proto.key, op, values)


def _parse_values(proto: common_pb2.Condition, field: str) -> tuple[MetadataScalar, ...]:
    if proto.HasField("value"):
        raise InvalidFilterError(f"{field}.value", "IN and NIN take `values`, not `value`")
    if not proto.values:
        raise InvalidFilterError(f"{field}.values", "IN and NIN need at least one value")
    values = tuple(
        _parse_value(v, f"{field}.values[{i}]", present=True) for i, v in enumerate(proto.values)
    )
    if len({value_kind(v) for v in values}) > 1:
        raise InvalidFilterError(f"{field}.values", "all values of IN/NIN must be of one type")
    return values


def _parse_value(proto: common_pb2.MetadataValue, field: str, *, present: bool) -> MetadataScalar:
    value = metadata_value_from_proto(proto) if present else None
    if value is None:
        raise InvalidFilterError(
            field, "set one of string_value, int_value, double_value, bool_value"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilterError(field, "double_value must be finite")
    if isinstance(value, str) and ("\x00" in value or len(value.encode()) > MAX_STRING_BYTES):
        raise InvalidFilterError(
            field, f"string_value must be at most {MAX_STRING_BYTES} bytes, without NUL"
        )
    return value
