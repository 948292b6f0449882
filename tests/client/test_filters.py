"""Chroma-style `where` dictionaries and the builders compile to the proto
Filter; bad ones fail locally with the offending part named."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from askmojo.client import InvalidArgument, InvalidFilter, compile_where
from askmojo.client import filters as f
from askmojo.common.filters import AllOf, AnyOf, Condition, Op, filter_from_proto


def parsed(where: Any) -> object:
    proto = compile_where(where)
    assert proto is not None
    return filter_from_proto(proto)


def test_none_is_no_filter() -> None:
    assert compile_where(None) is None


def test_a_bare_value_is_eq() -> None:
    assert parsed({"lang": "en"}) == Condition("lang", Op.EQ, ("en",))


def test_several_keys_and_operators_are_all_of() -> None:
    assert parsed({"year": {"$gte": 2020, "$lt": 2025}, "lang": "en"}) == AllOf(
        (
            Condition("year", Op.GTE, (2020,)),
            Condition("year", Op.LT, (2025,)),
            Condition("lang", Op.EQ, ("en",)),
        )
    )


def test_or_in_nin_and_not() -> None:
    where = {
        "$or": [{"tag": {"$in": ["a", "b"]}}, {"$not": {"lang": {"$nin": ["fr"]}}}],
        "draft": {"$ne": True},
    }
    assert parsed(where) == AllOf(
        (
            AnyOf((Condition("tag", Op.IN, ("a", "b")), Condition("lang", Op.IN, ("fr",)))),
            Condition("draft", Op.NE, (True,)),
        )
    )


def test_builders_spell_the_same_dicts() -> None:
    built = f.and_(f.gte("year", 2020), f.or_(f.eq("lang", "en"), f.in_("tag", ["x"])))
    assert built == {
        "$and": [
            {"year": {"$gte": 2020}},
            {"$or": [{"lang": {"$eq": "en"}}, {"tag": {"$in": ["x"]}}]},
        ]
    }
    assert compile_where(built) == compile_where(
        {"$and": [{"year": {"$gte": 2020}}, {"$or": [{"lang": "en"}, {"tag": {"$in": ["x"]}}]}]}
    )
    for make in (f.ne, f.gt, f.lt, f.lte):
        assert compile_where(make("n", 1)) is not None
    assert parsed(f.not_(f.nin("n", [1, 2]))) == Condition("n", Op.IN, (1, 2))


@pytest.mark.parametrize(
    ("where", "field", "words"),
    [
        ({}, "where", "empty filter"),
        ({"year": {"$gte": "2020"}}, 'where["year"]["$gte"]', "numbers only"),
        ({"year": {"$like": 1}}, 'where["year"]', "unknown operator"),
        ({"$xor": []}, 'where["$xor"]', "unknown operator"),
        ({"tag": {"$in": []}}, 'where["tag"]["$in"]', "at least one"),
        ({"tag": {"$in": "ab"}}, 'where["tag"]["$in"]', "list of values"),
        ({"tag": {"$in": [1, "a"]}}, 'where["tag"]["$in"]', "one type"),
        ({"bad key": 1}, 'where["bad key"]', "metadata key"),
        ({"x": None}, 'where["x"]', "got NoneType"),
        ({"x": float("nan")}, 'where["x"]', "finite"),
        ({"x": 2**64}, 'where["x"]', "64 bits"),
        ({"$or": {"a": 1}}, 'where["$or"]', "list of filters"),
        ({"$or": [1]}, 'where["$or"][0]', "dict"),
        ({"$not": {"year": {"$gt": 1}}}, "where.not.condition", "ambiguous"),
    ],
)
def test_bad_filters_fail_locally_naming_the_part(where: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        compile_where(where)
    error = caught.value
    assert isinstance(error, InvalidArgument) and isinstance(error, ValueError)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = error.violations
    assert violation.field == field
    assert words in violation.description
