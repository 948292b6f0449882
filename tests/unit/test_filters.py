"""Parsing, validation and normalisation of proto filters, and the
MetadataValue <-> Python mapping both services share."""

from __future__ import annotations

import math

import pytest

from askmojo.common.echo import fit, quoted
from askmojo.common.filters import (
    FILTER_CONDITIONS_CEILING,
    FILTER_VALUES_CEILING,
    AllOf,
    AnyOf,
    Condition,
    FilterLimits,
    InvalidFilterError,
    Op,
    check_metadata,
    filter_from_proto,
    metadata_to_proto,
    metadata_value_from_proto,
    metadata_value_to_proto,
    value_kind,
)
from askmojo.common.v1 import common_pb2 as c

# --- builders ----------------------------------------------------------------


def mv(value: object) -> c.MetadataValue:
    """A MetadataValue of the kind matching `value`'s Python type."""
    if isinstance(value, bool):
        return c.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return c.MetadataValue(int_value=value)
    if isinstance(value, float):
        return c.MetadataValue(double_value=value)
    assert isinstance(value, str)
    return c.MetadataValue(string_value=value)


def cond(key: str, op: int, value: object = None, values: list[object] | None = None) -> c.Filter:
    condition = c.Condition(key=key, op=op)
    if value is not None:
        condition.value.CopyFrom(value if isinstance(value, c.MetadataValue) else mv(value))
    for item in values or []:
        condition.values.append(item if isinstance(item, c.MetadataValue) else mv(item))
    return c.Filter(condition=condition)


def all_of(*filters: c.Filter) -> c.Filter:
    return c.Filter(all=c.FilterList(filters=list(filters)))


def any_of(*filters: c.Filter) -> c.Filter:
    return c.Filter(any=c.FilterList(filters=list(filters)))


def not_(inner: c.Filter) -> c.Filter:
    proto = c.Filter()
    getattr(proto, "not").CopyFrom(inner)
    return proto


def eq(key: str, value: object) -> c.Filter:
    return cond(key, c.OPERATOR_EQ, value)


def parse_error(proto: c.Filter, **kwargs: object) -> InvalidFilterError:
    with pytest.raises(InvalidFilterError) as info:
        filter_from_proto(proto, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- plain conditions --------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "expected"),
    [
        (c.OPERATOR_EQ, Op.EQ),
        (c.OPERATOR_NE, Op.NE),
        (c.OPERATOR_GT, Op.GT),
        (c.OPERATOR_GTE, Op.GTE),
        (c.OPERATOR_LT, Op.LT),
        (c.OPERATOR_LTE, Op.LTE),
    ],
)
def test_single_value_operators(op: int, expected: Op) -> None:
    assert filter_from_proto(cond("year", op, 2020)) == Condition("year", expected, (2020,))


@pytest.mark.parametrize("value", ["text", "", 0, -(2**63), 2**63 - 1, 1.5, -0.0, True, False])
def test_eq_keeps_value_and_its_type(value: object) -> None:
    node = filter_from_proto(eq("k", value))
    assert isinstance(node, Condition)
    assert node.value == value
    assert type(node.value) is type(value)
    assert node.values == (value,)


@pytest.mark.parametrize("op", [c.OPERATOR_IN, c.OPERATOR_NIN])
def test_list_operators_keep_order_and_duplicates(op: int) -> None:
    node = filter_from_proto(cond("tag", op, values=["b", "a", "b"]))
    assert node == Condition("tag", Op.IN if op == c.OPERATOR_IN else Op.NIN, ("b", "a", "b"))


def test_in_may_mix_ints_and_doubles() -> None:
    node = filter_from_proto(cond("n", c.OPERATOR_IN, values=[1, 2.5]))
    assert node == Condition("n", Op.IN, (1, 2.5))


@pytest.mark.parametrize("op", [c.OPERATOR_GT, c.OPERATOR_GTE, c.OPERATOR_LT, c.OPERATOR_LTE])
@pytest.mark.parametrize("value", [0, -7, 3.25])
def test_range_operators_take_ints_and_doubles(op: int, value: float) -> None:
    node = filter_from_proto(cond("n", op, value))
    assert isinstance(node, Condition)
    assert node.value == value


@pytest.mark.parametrize("key", ["a", "A_b.c-d", "0", "x" * 64, "_reserved", "..", "-"])
def test_valid_keys(key: str) -> None:
    assert filter_from_proto(eq(key, 1)) == Condition(key, Op.EQ, (1,))


# --- normalisation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "negated"),
    [
        (c.OPERATOR_EQ, Op.NE),
        (c.OPERATOR_NE, Op.EQ),
        (c.OPERATOR_IN, Op.NIN),
        (c.OPERATOR_NIN, Op.IN),
    ],
)
def test_not_flips_equality_and_membership(op: int, negated: Op) -> None:
    if op in (c.OPERATOR_IN, c.OPERATOR_NIN):
        proto, values = cond("k", op, values=["x", "y"]), ("x", "y")
    else:
        proto, values = cond("k", op, "x"), ("x",)
    assert filter_from_proto(not_(proto)) == Condition("k", negated, values)
    assert filter_from_proto(not_(not_(proto))) == filter_from_proto(proto)
    assert filter_from_proto(not_(not_(not_(proto)))) == Condition("k", negated, values)


def test_not_not_of_range_is_the_range_itself() -> None:
    proto = cond("n", c.OPERATOR_GT, 3)
    assert filter_from_proto(not_(not_(proto))) == Condition("n", Op.GT, (3,))


def test_all_and_any_map_to_tree_nodes() -> None:
    proto = all_of(eq("a", 1), any_of(eq("b", 2), eq("c", 3)))
    assert filter_from_proto(proto) == AllOf(
        (
            Condition("a", Op.EQ, (1,)),
            AnyOf((Condition("b", Op.EQ, (2,)), Condition("c", Op.EQ, (3,)))),
        )
    )


def test_de_morgan_not_all_is_any_of_negations() -> None:
    proto = not_(all_of(eq("a", 1), cond("b", c.OPERATOR_IN, values=["x"])))
    assert filter_from_proto(proto) == AnyOf(
        (Condition("a", Op.NE, (1,)), Condition("b", Op.NIN, ("x",)))
    )


def test_de_morgan_not_any_is_all_of_negations() -> None:
    proto = not_(any_of(eq("a", 1), cond("b", c.OPERATOR_NE, "x")))
    assert filter_from_proto(proto) == AllOf(
        (Condition("a", Op.NE, (1,)), Condition("b", Op.EQ, ("x",)))
    )


def test_de_morgan_applies_through_nesting() -> None:
    proto = not_(all_of(eq("a", 1), any_of(eq("b", 2), not_(eq("c", 3)))))
    assert filter_from_proto(proto) == AnyOf(
        (
            Condition("a", Op.NE, (1,)),
            AllOf((Condition("b", Op.NE, (2,)), Condition("c", Op.EQ, (3,)))),
        )
    )


def test_single_item_lists_are_kept() -> None:
    assert filter_from_proto(all_of(eq("a", 1))) == AllOf((Condition("a", Op.EQ, (1,)),))
    assert filter_from_proto(any_of(eq("a", 1))) == AnyOf((Condition("a", Op.EQ, (1,)),))


def test_result_contains_no_negation_and_only_known_ops() -> None:
    proto = not_(any_of(not_(all_of(eq("a", 1), not_(eq("b", 2)))), eq("c", "x")))

    def walk(node: object) -> None:
        if isinstance(node, Condition):
            assert node.op in (Op.EQ, Op.NE)
        else:
            assert isinstance(node, AllOf | AnyOf)
            for child in node.filters:
                walk(child)

    tree = filter_from_proto(proto)
    walk(tree)
    # not(any(not(all(a=1, not b=2)), c=x)) == all(all(a=1, b!=2), c!=x)
    assert tree == AllOf(
        (
            AllOf((Condition("a", Op.EQ, (1,)), Condition("b", Op.NE, (2,)))),
            Condition("c", Op.NE, ("x",)),
        )
    )


# --- rejections and their field paths -----------------------------------------


def test_empty_filter() -> None:
    error = parse_error(c.Filter())
    assert error.field == "filter"
    assert "condition, all, any or not" in error.description


def test_field_prefix_is_configurable() -> None:
    assert parse_error(c.Filter(), field="request.where").field == "request.where"


@pytest.mark.parametrize("kind", ["all", "any"])
def test_empty_filter_list(kind: str) -> None:
    proto = c.Filter(**{kind: c.FilterList()})
    error = parse_error(proto)
    assert error.field == f"filter.{kind}.filters"
    assert "at least one" in error.description


def test_empty_inner_filter_names_its_index() -> None:
    error = parse_error(all_of(eq("a", 1), any_of(eq("b", 2), c.Filter())))
    assert error.field == "filter.all.filters[1].any.filters[1]"


def test_empty_filter_under_not() -> None:
    assert parse_error(not_(c.Filter())).field == "filter.not"


def test_unset_op() -> None:
    error = parse_error(c.Filter(condition=c.Condition(key="k", value=mv(1))))
    assert error.field == "filter.condition.op"


def test_unknown_op_number() -> None:
    condition = c.Condition(key="k", value=mv(1))
    condition.op = 99  # type: ignore[assignment]  # open enum: unknown numbers survive
    assert parse_error(c.Filter(condition=condition)).field == "filter.condition.op"


@pytest.mark.parametrize(
    "key", ["", "has space", "ü", "a/b", "a:b", "x" * 65, "k\n", "\tk", "key$", "a,b"]
)
def test_bad_key(key: str) -> None:
    error = parse_error(all_of(eq("ok", 1), eq(key, 1)))
    assert error.field == "filter.all.filters[1].condition.key"
    assert "1 to 64 characters" in error.description


def test_echoed_values_are_shortened_and_say_how_long_they_were() -> None:
    assert quoted("abc") == "'abc'"
    assert quoted("a" * 20_000) == repr("a" * 80) + "…(20000 chars)"
    wide = fit("é" * 20_000, 1024)
    assert len(wide.encode()) <= 1024 and wide.endswith("…(20000 chars)")
    assert fit("short", 1024) == "short"
    # The marker counts against the bound: cutting to the bound and adding
    # the marker after it made messages of 1,039-1,041 bytes.
    assert len(fit("a" * 5000, 1024).encode()) == 1024


def test_a_long_key_is_echoed_shortened() -> None:
    """A 5,000-character key was echoed whole, in the filter's description
    and in a metadata field path."""
    key = "k" * 5000
    error = parse_error(eq(key, 1))
    assert error.field == "filter.condition.key"
    assert quoted(key) in error.description and len(error.description) < 200
    with pytest.raises(InvalidFilterError) as info:
        check_metadata({key: 1}, max_keys=8, max_string_bytes=64, field="documents[0].metadata")
    assert info.value.field == f"documents[0].metadata[{quoted(key)}]"


@pytest.mark.parametrize("op", [c.OPERATOR_GT, c.OPERATOR_GTE, c.OPERATOR_LT, c.OPERATOR_LTE])
@pytest.mark.parametrize(("value", "kind"), [("10", "string"), (True, "bool"), (False, "bool")])
def test_range_operator_rejects_non_numbers(op: int, value: object, kind: str) -> None:
    error = parse_error(cond("n", op, value))
    assert error.field == "filter.condition.value"
    assert "numbers" in error.description
    assert kind in error.description


@pytest.mark.parametrize("op", [c.OPERATOR_GT, c.OPERATOR_GTE, c.OPERATOR_LT, c.OPERATOR_LTE])
def test_not_over_range_operator_is_rejected(op: int) -> None:
    error = parse_error(all_of(eq("a", 1), not_(cond("n", op, 5))))
    assert error.field == "filter.all.filters[1].not.condition"
    assert "complementary" in error.description


def test_range_under_de_morgan_negation_is_rejected() -> None:
    error = parse_error(not_(any_of(eq("a", 1), cond("n", c.OPERATOR_LT, 5))))
    assert error.field == "filter.not.any.filters[1].condition"


def test_in_without_values() -> None:
    error = parse_error(cond("k", c.OPERATOR_IN))
    assert error.field == "filter.condition.values"
    assert "at least one" in error.description


@pytest.mark.parametrize(
    "values",
    [["a", 1], [1, True], ["a", False], [1.5, "x"], [True, 0.0]],
)
@pytest.mark.parametrize("op", [c.OPERATOR_IN, c.OPERATOR_NIN])
def test_in_with_mixed_types(values: list[object], op: int) -> None:
    error = parse_error(cond("k", op, values=values))
    assert error.field == "filter.condition.values"
    assert "one type" in error.description


@pytest.mark.parametrize("op", [c.OPERATOR_IN, c.OPERATOR_NIN])
def test_in_with_value_set(op: int) -> None:
    error = parse_error(cond("k", op, "a", values=["b"]))
    assert error.field == "filter.condition.value"
    assert "values" in error.description


def test_in_with_value_set_even_when_values_empty() -> None:
    assert parse_error(cond("k", c.OPERATOR_IN, "a")).field == "filter.condition.value"


@pytest.mark.parametrize("op", [c.OPERATOR_EQ, c.OPERATOR_NE, c.OPERATOR_GT])
def test_single_value_op_with_values_set(op: int) -> None:
    error = parse_error(cond("k", op, 1, values=[1, 2]))
    assert error.field == "filter.condition.values"
    assert "IN and NIN" in error.description


@pytest.mark.parametrize("op", [c.OPERATOR_EQ, c.OPERATOR_LT])
def test_missing_value(op: int) -> None:
    error = parse_error(cond("k", op))
    assert error.field == "filter.condition.value"
    assert "string_value" in error.description


def test_value_present_but_kind_unset() -> None:
    error = parse_error(cond("k", c.OPERATOR_EQ, c.MetadataValue()))
    assert error.field == "filter.condition.value"


def test_unset_metadata_value_in_values_names_its_index() -> None:
    error = parse_error(cond("k", c.OPERATOR_NIN, values=["a", "b", c.MetadataValue()]))
    assert error.field == "filter.condition.values[2]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_double(bad: float) -> None:
    error = parse_error(eq("k", bad))
    assert error.field == "filter.condition.value"
    assert "finite" in error.description


def test_non_finite_double_in_values() -> None:
    error = parse_error(cond("k", c.OPERATOR_IN, values=[1.0, math.nan]))
    assert error.field == "filter.condition.values[1]"


def _nested_nots(depth: int) -> c.Filter:
    proto = eq("k", 1)
    for _ in range(depth):
        proto = not_(proto)
    return proto


def _nested_alls(depth: int) -> c.Filter:
    proto = eq("k", 1)
    for _ in range(depth):
        proto = all_of(proto)
    return proto


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert filter_from_proto(_nested_nots(14)) == Condition("k", Op.EQ, (1,))
    assert filter_from_proto(_nested_nots(15)) == Condition("k", Op.NE, (1,))
    assert isinstance(filter_from_proto(_nested_alls(15)), AllOf)


def test_too_deep_nesting() -> None:
    error = parse_error(_nested_nots(16))
    assert error.field == "filter" + ".not" * 16
    assert "nested too deeply" in error.description
    error = parse_error(_nested_alls(16))
    assert error.field == "filter" + ".all.filters[0]" * 16


def test_max_depth_is_configurable() -> None:
    assert filter_from_proto(_nested_nots(2), max_depth=3) == Condition("k", Op.EQ, (1,))
    assert parse_error(_nested_nots(3), max_depth=3).field == "filter.not.not.not"
    assert parse_error(eq("k", 1), max_depth=0).field == "filter"


def test_very_deep_nesting_fails_cleanly() -> None:
    # Far past the limit: stops at the limit instead of recursing all the way.
    error = parse_error(_nested_nots(80))
    assert error.field.count(".not") == 16


def test_error_message_includes_field_and_description() -> None:
    error = parse_error(c.Filter())
    assert isinstance(error, ValueError)
    assert str(error) == f"{error.field}: {error.description}"


# --- metadata values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("", "string_value"),
        ("héllo 漢字 😀", "string_value"),
        (0, "int_value"),
        (-(2**63), "int_value"),
        (2**63 - 1, "int_value"),
        (0.0, "double_value"),
        (-1.5e300, "double_value"),
        (True, "bool_value"),
        (False, "bool_value"),
    ],
)
def test_metadata_value_round_trip(value: object, kind: str) -> None:
    proto = metadata_value_to_proto(value)  # type: ignore[arg-type]
    assert proto.WhichOneof("kind") == kind
    back = metadata_value_from_proto(proto)
    assert back == value
    assert type(back) is type(value)


def test_bool_stays_bool_not_int() -> None:
    assert metadata_value_to_proto(True).WhichOneof("kind") == "bool_value"
    assert metadata_value_from_proto(c.MetadataValue(bool_value=True)) is True
    assert metadata_value_from_proto(c.MetadataValue(bool_value=False)) is False
    assert type(metadata_value_from_proto(c.MetadataValue(int_value=1))) is int


def test_zero_values_keep_their_kind() -> None:
    # proto3 oneof members keep presence even at their default value.
    assert metadata_value_from_proto(c.MetadataValue(int_value=0)) == 0
    assert metadata_value_from_proto(c.MetadataValue(string_value="")) == ""
    assert metadata_value_from_proto(c.MetadataValue(bool_value=False)) is False
    parsed = c.MetadataValue.FromString(c.MetadataValue(double_value=0.0).SerializeToString())
    assert parsed.WhichOneof("kind") == "double_value"


def test_unset_metadata_value_is_none() -> None:
    assert metadata_value_from_proto(c.MetadataValue()) is None


def test_metadata_value_survives_serialisation() -> None:
    for value in ("s", 7, 2.5, True):
        wire = metadata_value_to_proto(value).SerializeToString()
        back = metadata_value_from_proto(c.MetadataValue.FromString(wire))
        assert back == value
        assert type(back) is type(value)


def test_metadata_to_proto_maps_every_entry() -> None:
    metadata = {"s": "x", "i": 3, "d": 0.5, "b": False}
    protos = metadata_to_proto(metadata)
    assert set(protos) == set(metadata)
    assert {k: metadata_value_from_proto(v) for k, v in protos.items()} == metadata
    assert protos["b"].WhichOneof("kind") == "bool_value"


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "bool"), (False, "bool"), (0, "number"), (1.5, "number"), ("", "string")],
)
def test_value_kind(value: object, kind: str) -> None:
    assert value_kind(value) == kind  # type: ignore[arg-type]


# --- width (issue 11: 10,000 conditions crashed the vector service) ------------


def _wide_any(count: int) -> c.Filter:
    return c.Filter(any=c.FilterList(filters=[eq("k", i) for i in range(count)]))


def test_too_many_conditions_are_refused_before_parsing() -> None:
    error = parse_error(_wide_any(10_000), limits=FilterLimits(max_conditions=256))
    assert error.field == "filter"
    assert error.description == (
        "filter has 10000 conditions; at most 256 allowed (MAX_FILTER_CONDITIONS)"
    )


def test_conditions_are_counted_across_the_tree() -> None:
    proto = all_of(_wide_any(3), not_(_wide_any(3)), eq("a", 1))
    assert isinstance(filter_from_proto(proto, limits=FilterLimits(max_conditions=7)), AllOf)
    assert (
        "has 7 conditions" in parse_error(proto, limits=FilterLimits(max_conditions=6)).description
    )


def test_too_many_in_values_are_refused() -> None:
    proto = all_of(
        cond("n", c.OPERATOR_IN, values=list(range(3))),
        cond("s", c.OPERATOR_NIN, values=["a", "b"]),
    )
    assert isinstance(filter_from_proto(proto, limits=FilterLimits(max_values=5)), AllOf)
    error = parse_error(proto, limits=FilterLimits(max_values=4))
    assert error.description == "filter has 5 IN/NIN values; at most 4 allowed (MAX_FILTER_VALUES)"


def test_the_ceilings_apply_without_explicit_limits() -> None:
    error = parse_error(_wide_any(FILTER_CONDITIONS_CEILING + 1))
    assert "MAX_FILTER_CONDITIONS" in error.description
    huge_in = cond("n", c.OPERATOR_IN, values=list(range(FILTER_VALUES_CEILING + 1)))
    assert "MAX_FILTER_VALUES" in parse_error(huge_in).description


def test_a_huge_filter_is_refused_before_it_is_all_counted() -> None:
    # "more than": counting stopped past the limit instead of walking all
    # 200,000 conditions (how fast that is, is the benchmark's business).
    error = parse_error(_wide_any(200_000), limits=FilterLimits(max_conditions=10))
    assert error.description.startswith("filter has more than ")


def test_width_counting_stops_at_the_depth_limit() -> None:
    # Deeper than the parser allows: reported as too deep, not walked further.
    error = parse_error(_nested_alls(40), limits=FilterLimits(max_conditions=1))
    assert "nested too deeply" in error.description
