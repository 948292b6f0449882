"""The widest filter any deployment may allow (the ceilings in
askmojo.common.filters) is taken by Chroma, embedded and as a server: at
~1000 conditions it answered "Expression tree is too large", at ~16,400
numbers in one IN "too many SQL variables", and crashed beyond."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from askmojo.common.filters import (
    FILTER_CONDITIONS_CEILING,
    FILTER_VALUES_CEILING,
    AllOf,
    AnyOf,
    Condition,
    FilterNode,
    Op,
)
from vector_service.store import VectorStore


def _numbers(count: int, start: int = 0) -> tuple[int | float, ...]:
    # Ints and doubles mixed: Chroma is then handed doubles (one SQL variable
    # pair per number, its worst case).
    return tuple(float(i) if i % 2 else i for i in range(start, start + count))


CEILING_FILTERS: list[tuple[str, FilterNode, list[str]]] = [
    (
        "any of the most conditions",
        AnyOf(tuple(Condition("n", Op.EQ, (i,)) for i in range(FILTER_CONDITIONS_CEILING))),
        ["a"],
    ),
    (
        "all of the most conditions",
        AllOf(tuple(Condition("n", Op.NE, (-i - 1,)) for i in range(FILTER_CONDITIONS_CEILING))),
        ["a", "b"],
    ),
    ("IN of the most numbers", Condition("n", Op.IN, _numbers(FILTER_VALUES_CEILING)), ["a"]),
    (
        "NIN of the most strings",
        Condition("s", Op.NIN, tuple(f"v{i}" for i in range(FILTER_VALUES_CEILING))),
        ["a", "b"],
    ),
]


@pytest.mark.parametrize(("what", "where", "expected"), CEILING_FILTERS, ids=lambda v: str(v)[:30])
def test_chroma_takes_filters_at_the_ceilings(
    store: VectorStore, what: str, where: FilterNode, expected: list[str]
) -> None:
    name = f"c-{uuid.uuid4().hex[:10]}"
    store.ensure_collection(name, 2, "toy")
    store.upsert(
        name,
        ["a", "b"],
        np.asarray([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32),
        [{"n": 7, "s": "x"}, {"s": "y"}],
    )
    matches = store.query(name, np.asarray([1.0, 0.0], dtype=np.float32), 5, where)
    assert sorted(m.id for m in matches) == expected, what
    ids, _ = store.list_ids(name, None, 10, where)
    assert sorted(ids) == expected, what
