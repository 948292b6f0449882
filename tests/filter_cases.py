"""One table of filter cases, run against the SQL side (SQLite, PostgreSQL)
and the Chroma side (embedded, server): the same filter must select the same
records everywhere."""

from __future__ import annotations

from askmojo.common.filters import AllOf, AnyOf, Condition, FilterNode, MetadataScalar, Op

FILTER_RECORDS: dict[str, dict[str, MetadataScalar]] = {
    "int1": {"n": 1, "kind": "a", "flag": True},
    "float25": {"n": 2.5, "kind": "b", "flag": False},
    "int10": {"n": 10, "kind": "a"},
    "str": {"n": "10", "kind": "c"},
    "none": {},
}


def cond(key: str, op: Op, *values: MetadataScalar) -> Condition:
    return Condition(key, op, values)


FILTER_CASES: list[tuple[FilterNode, list[str]]] = [
    (cond("n", Op.GT, 2), ["float25", "int10"]),  # the string "10" is not a number
    (cond("n", Op.GTE, 2.5), ["float25", "int10"]),
    (cond("n", Op.LT, 2.5), ["int1"]),
    (cond("n", Op.LTE, 2.5), ["float25", "int1"]),
    (cond("n", Op.EQ, 1.0), ["int1"]),  # ints and doubles compare as numbers
    (cond("n", Op.EQ, "10"), ["str"]),
    (cond("n", Op.NE, 10), ["float25", "int1", "none", "str"]),  # NE matches missing keys
    (cond("kind", Op.IN, "a", "c"), ["int1", "int10", "str"]),
    (cond("kind", Op.NIN, "a"), ["float25", "none", "str"]),
    (cond("n", Op.IN, 1, 2.5), ["float25", "int1"]),
    (cond("flag", Op.EQ, True), ["int1"]),
    (cond("flag", Op.NE, True), ["float25", "int10", "none", "str"]),
    (AllOf((cond("kind", Op.EQ, "a"), cond("n", Op.GT, 5))), ["int10"]),
    (AnyOf((cond("kind", Op.EQ, "b"), cond("n", Op.GT, 5))), ["float25", "int10"]),
]
