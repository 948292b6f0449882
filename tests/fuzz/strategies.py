"""Hypothesis strategies derived from the proto descriptors of both services.

Nothing here names a request type: every RPC is found by walking
`DESCRIPTOR.services_by_name[...].methods`, and each request is generated
from its input type's fields, recursively, so an RPC or a field added later
is fuzzed without a change here. Three families:

- `requests(method)`: protobuf messages, field by field: strings (unicode,
  NUL, names that exist, very long), integers at their type's bounds, floats
  with nan/inf, enums with unknown numbers, oneofs, maps, repeated fields of
  0..4 items or thousands; recursive messages (the Filter tree) also come
  deep (past protobuf's nesting limit) and wide (thousands of conditions).
- `mutations(valid)`: a valid request with a field swapped, cleared or set to
  an extreme value, or its serialized bytes bit-flipped, cut or extended.
- `raw_payloads(method)`: arbitrary bytes, plus bytes crafted from the input
  type: invalid UTF-8 in every string field, wrong wire types, lengths past
  the end, nesting deeper than any decoder allows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from askmojo.metadata.v1 import metadata_service_pb2
from askmojo.vector.v1 import embedding_service_pb2, vector_service_pb2

FD = FieldDescriptor

SERVICES: tuple[ServiceDescriptor, ...] = (
    *metadata_service_pb2.DESCRIPTOR.services_by_name.values(),
    *embedding_service_pb2.DESCRIPTOR.services_by_name.values(),
    *vector_service_pb2.DESCRIPTOR.services_by_name.values(),
)


@dataclass(frozen=True)
class Method:
    service: str  # full name, e.g. askmojo.metadata.v1.MetadataService
    name: str
    input: Descriptor
    output: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"

    @property
    def label(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.name}"

    @property
    def request_class(self) -> type[Message]:
        return GetMessageClass(self.input)

    @property
    def response_class(self) -> type[Message]:
        return GetMessageClass(self.output)


def all_methods() -> list[Method]:
    return [
        Method(
            service.full_name,
            m.name,
            m.input_type,
            m.output_type,
            m.client_streaming,
            m.server_streaming,
        )
        for service in SERVICES
        for m in service.methods
    ]


# --- values ------------------------------------------------------------------

# Names the fuzzer may hit on purpose, so calls reach past NOT_FOUND: the test
# module creates these (and never lets the fuzzer see the seeded collection).
KNOWN_STRINGS: list[str] = []

SPECIAL_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "fuzz\x00",
    "\u202etxt",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "💥",
    "é",
    "' OR '1'='1",
    '"; DROP TABLE documents; --',
    "%",
    "_",
    "*",
    "..",
    "../../etc/passwd",
    "10.0.0.1",
    "\n",
    "\\",
    "null",
    "NaN",
    "-1",
    "0",
    "4294967296",
    "9223372036854775808",
    "1e999",
    "$where",
    "$and",
]
LONG_SIZES = [63, 64, 255, 256, 511, 512, 513, 4096, 4097, 5000, 20_000, 100_000, 1_100_000]
WIDE_SIZES = [100, 1000, 1001, 2000, 5000, 10_000, 20_000, 130_000]
# For lists of messages (documents, records, conditions): 1000 documents or
# records to embed is legitimate work of half a minute here, found nothing
# that 100 did not, and would take the run's whole budget; one more than the
# services' usual limits (1000) is refused cheaply.
WIDE_MESSAGE_SIZES = [100, 1001, 2000, 5000, 10_000, 20_000, 130_000]
DEEP_SIZES = [2, 15, 16, 17, 32, 64, 99, 100, 101, 200, 1000]
# One generated request stays under this many bytes (the services accept
# 64 MiB; the machine is shared, and a bigger request finds nothing new).
MAX_REQUEST_BYTES = 8 * 1024 * 1024


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=24),
        st.deferred(lambda: st.sampled_from(KNOWN_STRINGS or [""])),
        st.sampled_from(SPECIAL_STRINGS),
        # Numbers as text (page tokens, offsets): at and past every bound.
        _integers(-(2**64), 2**64).map(str),
        st.builds(
            lambda ch, n: ch * n,
            st.sampled_from(["a", "é", "💥", "\x00", "7"]),
            st.sampled_from(LONG_SIZES),
        ),
    )


def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [
        v
        for v in (
            0,
            1,
            -1,
            2,
            3,
            10,
            100,
            1000,
            1001,
            10_000,
            2**31 - 1,
            -(2**31),
            2**32,
            2**53 + 1,
            2**63 - 1,
            -(2**63),
            2**64 - 1,
        )
        if lo <= v <= hi
    ]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


@cache
def scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FD.TYPE_STRING:
        return strings()
    if t == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == FD.TYPE_FLOAT:
        return st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 3.4e38, 1e-45]),
            st.floats(width=32),
        )
    if t == FD.TYPE_DOUBLE:
        return st.one_of(
            st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1.8e308, 5e-324, 2.0**63]),
            st.floats(),
        )
    if t == FD.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from([*known, 99, -1, 2**31 - 1, -(2**31)])
    raise AssertionError(f"no strategy for {field.full_name} (type {t})")


# --- messages ----------------------------------------------------------------

MAX_DEPTH = 4


@cache
def _recursive(desc: Descriptor) -> bool:
    return bool(_self_paths(desc))


@cache
def _self_paths(desc: Descriptor) -> tuple[tuple[FieldDescriptor, ...], ...]:
    """Field paths (up to 3 fields) that lead from `desc` back to `desc`:
    for Filter, (not,), (all, filters), (any, filters)."""
    found: list[tuple[FieldDescriptor, ...]] = []

    def walk(d: Descriptor, path: tuple[FieldDescriptor, ...]) -> None:
        if len(path) >= 3:
            return
        for f in d.fields:
            if f.type != FD.TYPE_MESSAGE or _is_map(f):
                continue
            if f.message_type is desc:
                found.append((*path, f))
            elif f.message_type not in [p.message_type for p in path]:
                walk(f.message_type, (*path, f))

    walk(desc, ())
    return tuple(found)


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


# Valid messages of each type (full name -> messages), taken from the test's
# valid requests and all their sub-messages: a generated request sometimes
# uses one (a real document, a well-formed condition) so the rest of it gets
# past validation; a wide filter's conditions are often real ones.
EXAMPLES: dict[str, list[Message]] = {}


def register_examples(messages: Sequence[Message]) -> None:
    """Records `messages` and every message inside them in EXAMPLES. Call it
    before any strategy is built (the strategies are cached)."""
    seen: dict[str, set[bytes]] = {}

    def walk(msg: Message) -> None:
        name = msg.DESCRIPTOR.full_name
        data = msg.SerializeToString(deterministic=True)
        if data not in seen.setdefault(name, set()):
            seen[name].add(data)
            copy = type(msg)()
            copy.CopyFrom(msg)
            EXAMPLES.setdefault(name, []).append(copy)
        for field, value in msg.ListFields():
            if field.type != FD.TYPE_MESSAGE:
                continue
            if _is_map(field):
                items = [v for v in value.values() if isinstance(v, Message)]
            else:
                items = list(value) if _is_repeated(field) else [value]
            for item in items:
                walk(item)

    for m in messages:
        walk(m)


def _with_examples(
    desc: Descriptor, base: st.SearchStrategy[Message]
) -> st.SearchStrategy[Message]:
    known = EXAMPLES.get(desc.full_name)
    return st.one_of(base, st.sampled_from(known)) if known else base


@cache
def message(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    if depth == 0 or (depth <= 2 and _recursive(desc)):
        return _with_examples(desc, _top_message(desc, depth))
    return _with_examples(desc, _plain_message(desc, depth))


@cache
def _top_message(desc: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    plain = _plain_message(desc, depth)
    if not _recursive(desc):
        return plain
    # A recursive type (the Filter tree): as often deep or wide as generic.
    return st.one_of(plain, _deep(desc), _wide(desc))


@cache
def _plain_message(desc: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    return _build_message(desc, depth)


@st.composite
def _build_message(
    draw: st.DrawFn, desc: Descriptor, depth: int, leaf_of: Descriptor | None = None
) -> Message:
    msg = GetMessageClass(desc)()

    def recursive(f: FieldDescriptor) -> bool:
        return (
            leaf_of is not None and f.type == FD.TYPE_MESSAGE and _reaches(f.message_type, leaf_of)
        )

    in_oneof = set()
    for oneof in desc.oneofs:
        in_oneof.update(oneof.fields)
        members = [f for f in oneof.fields if not recursive(f)]
        choice = draw(st.sampled_from(members if leaf_of and members else [None, *members]))
        if choice is not None:
            _set(draw, msg, choice, depth)
    for field in desc.fields:
        if field in in_oneof or recursive(field):
            continue
        if draw(st.integers(0, 3)) > 0:  # present three times in four
            _set(draw, msg, field, depth)
    return msg


@cache
def _reaches(start: Descriptor, target: Descriptor) -> bool:
    """Whether a message of type `start` can contain a `target`."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        d = todo.pop()
        if d is target:
            return True
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        todo += [f.message_type for f in d.fields if f.type == FD.TYPE_MESSAGE]
    return False


@cache
def _leaf(desc: Descriptor) -> st.SearchStrategy[Message]:
    """The recursive type with no recursion (a Filter that is a condition):
    fields that lead back to `desc` stay unset, a oneof always gets a member."""
    generic = _build_message(desc, 1, leaf_of=desc)
    known = [
        m
        for m in EXAMPLES.get(desc.full_name, [])
        if not any(
            f.type == FD.TYPE_MESSAGE and _reaches(f.message_type, desc) for f, _ in m.ListFields()
        )
    ]
    return st.one_of(generic, st.sampled_from(known)) if known else generic


@st.composite
def _deep(draw: st.DrawFn, desc: Descriptor) -> Message:
    paths = _self_paths(desc)
    path = draw(st.sampled_from(paths))
    depth = draw(st.sampled_from(DEEP_SIZES))
    leaf = draw(_leaf(desc))
    root = GetMessageClass(desc)()
    cur: Any = root
    for _ in range(depth):
        cur = _descend(cur, path)
    cur.CopyFrom(leaf)
    return root


@st.composite
def _wide(draw: st.DrawFn, desc: Descriptor) -> Message:
    paths = [p for p in _self_paths(desc) if _is_repeated(p[-1])]
    if not paths:
        return draw(_deep(desc))
    path = draw(st.sampled_from(paths))
    width = draw(st.sampled_from(WIDE_MESSAGE_SIZES))
    leaf = draw(_leaf(desc))
    root = GetMessageClass(desc)()
    cur: Any = root
    for f in path[:-1]:
        cur = getattr(cur, f.name)
    items = getattr(cur, path[-1].name)
    size = max(1, leaf.ByteSize())
    for i in range(min(width, MAX_REQUEST_BYTES // size)):
        items.add().CopyFrom(vary(leaf, i))
    return root


def _descend(cur: Any, path: Sequence[FieldDescriptor]) -> Any:
    for f in path:
        cur = getattr(cur, f.name).add() if _is_repeated(f) else getattr(cur, f.name)
    return cur


def _set(draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int) -> None:
    """Sets `field` of `msg` to a drawn value; a value protobuf itself refuses
    (none should be) is left out."""
    try:
        if _is_map(field):
            _set_map(draw, msg, field, depth)
        elif _is_repeated(field):
            _set_repeated(draw, msg, field, depth)
        elif field.type == FD.TYPE_MESSAGE:
            if depth >= MAX_DEPTH:
                return
            getattr(msg, field.name).CopyFrom(draw(message(field.message_type, depth + 1)))
        else:
            setattr(msg, field.name, draw(scalar(field)))
    except (ValueError, TypeError, OverflowError):
        pass


def _element(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_MESSAGE:
        return message(field.message_type, depth + 1)
    return scalar(field)


def _set_repeated(draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int) -> None:
    if field.type == FD.TYPE_MESSAGE and depth >= MAX_DEPTH:
        return
    items: Any = getattr(msg, field.name)
    if draw(st.integers(0, 5)) > 0:
        values = draw(st.lists(_element(field, depth), max_size=4))
        if field.type == FD.TYPE_MESSAGE:
            for v in values:
                items.add().CopyFrom(v)
        else:
            items.extend(values)
        return
    # Wide: one drawn element many times (varied so they differ), within the byte cap.
    first = draw(_element(field, depth))
    sizes = [*WIDE_SIZES, *KNOWN_WIDTHS] if field.type != FD.TYPE_MESSAGE else WIDE_MESSAGE_SIZES
    width = draw(st.sampled_from(sizes))
    if field.type == FD.TYPE_MESSAGE:
        size = max(1, first.ByteSize())
        for i in range(min(width, MAX_REQUEST_BYTES // size)):
            items.add().CopyFrom(vary(first, i))
    else:
        size = len(first.encode("utf-8", "surrogatepass")) + 2 if isinstance(first, str) else 9
        items.extend(vary_scalar(first, i) for i in range(min(width, MAX_REQUEST_BYTES // size)))


# Sizes worth hitting exactly for repeated scalars (e.g. the model's dimension
# for a vector); the test module adds them once it knows them.
KNOWN_WIDTHS: list[int] = []


def _set_map(draw: st.DrawFn, msg: Message, field: FieldDescriptor, depth: int) -> None:
    key_field = field.message_type.fields_by_name["key"]
    value_field = field.message_type.fields_by_name["value"]
    target: Any = getattr(msg, field.name)
    if draw(st.integers(0, 5)) > 0:
        n = draw(st.integers(0, 4))
    else:
        n = draw(st.sampled_from([33, 65, 100, 1000]))
    for i in range(n):
        key = draw(scalar(key_field)) if i < 4 else vary_scalar(draw(scalar(key_field)), i)
        if value_field.type == FD.TYPE_MESSAGE:
            target[key].CopyFrom(draw(message(value_field.message_type, depth + 1)))
        else:
            target[key] = draw(scalar(value_field))


def vary_scalar(value: Any, i: int) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return f"{value[:200]}{i}"
    if isinstance(value, bytes):
        return value + str(i).encode()
    if isinstance(value, float):
        return value + i if math.isfinite(value) else value
    if isinstance(value, int):
        return i
    return value


def vary(msg: Message, i: int) -> Message:
    """A copy of `msg` whose first scalar field (searched depth-first) is
    made to depend on `i`, so replicated items are not all equal."""
    copy = type(msg)()
    copy.CopyFrom(msg)
    _vary_in_place(copy, i, 0)
    return copy


def _vary_in_place(msg: Message, i: int, depth: int) -> bool:
    if depth > 3:
        return False
    for field, value in msg.ListFields():
        if _is_repeated(field):
            continue
        if field.type == FD.TYPE_MESSAGE:
            if _vary_in_place(value, i, depth + 1):
                return True
            continue
        try:
            setattr(msg, field.name, vary_scalar(value, i))
        except (ValueError, TypeError, OverflowError):
            continue
        return True
    return False


# --- per method --------------------------------------------------------------


@cache
def requests(method: Method) -> st.SearchStrategy[list[Message]]:
    """What one call sends: one message, or 1..3 for a client stream."""
    one = message(method.input)
    if method.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda m: [m])


# --- mutations of valid requests -----------------------------------------------


def _fields_with_parents(msg: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor]]:
    """(message, field) for every field of `msg` and its set sub-messages."""
    out = [(msg, f) for f in msg.DESCRIPTOR.fields]
    if depth < 3:
        for field, value in msg.ListFields():
            if field.type != FD.TYPE_MESSAGE or _is_map(field):
                continue
            for sub in value if _is_repeated(field) else [value]:
                out += _fields_with_parents(sub, depth + 1)
    return out


@st.composite
def _mutate_message(draw: st.DrawFn, valid: Message) -> Message:
    msg = type(valid)()
    msg.CopyFrom(valid)
    for _ in range(draw(st.integers(1, 3))):
        targets = _fields_with_parents(msg)
        if not targets:  # a request with no fields: only its bytes can change
            break
        parent, field = draw(st.sampled_from(targets))
        op = draw(
            st.sampled_from(["replace", "replace", "clear", "swap", "duplicate", "widen", "widen"])
        )
        if op == "clear":
            parent.ClearField(field.name)
        elif op == "replace":
            parent.ClearField(field.name)
            _set(draw, parent, field, 1)
        elif op == "duplicate" and _is_repeated(field) and not _is_map(field):
            items: Any = getattr(parent, field.name)
            if len(items):
                if field.type == FD.TYPE_MESSAGE:
                    first = type(items[0])()
                    first.CopyFrom(items[0])
                    items.add().CopyFrom(first)
                else:
                    items.append(items[0])
        elif op == "widen":
            _widen(draw, targets)
        elif op == "swap":
            same = [
                f
                for p, f in targets
                if p is parent
                and f is not field
                and f.type == field.type
                and _is_repeated(f) == _is_repeated(field)
                and f.type != FD.TYPE_MESSAGE
                and not _is_repeated(f)
            ]
            if same:
                other = draw(st.sampled_from(same))
                a, b = getattr(parent, field.name), getattr(parent, other.name)
                try:
                    setattr(parent, field.name, b)
                    setattr(parent, other.name, a)
                except (ValueError, TypeError):
                    pass
    return msg


def _widen(draw: st.DrawFn, targets: list[tuple[Message, FieldDescriptor]]) -> None:
    """A repeated field of a valid request (a filter's conditions, IN's
    values, ids, records) grown to thousands of varied copies of its first
    item: valid input, only large."""
    lists = [
        (p, f) for p, f in targets if _is_repeated(f) and not _is_map(f) and len(getattr(p, f.name))
    ]
    if not lists:
        return
    parent, field = draw(st.sampled_from(lists))
    items: Any = getattr(parent, field.name)
    first = items[0]
    width = draw(
        st.sampled_from(WIDE_SIZES if field.type != FD.TYPE_MESSAGE else WIDE_MESSAGE_SIZES)
    )
    if field.type == FD.TYPE_MESSAGE:
        size = max(1, first.ByteSize())
        copies = [vary(first, i) for i in range(min(width, MAX_REQUEST_BYTES // size))]
        del items[:]
        for c in copies:
            items.add().CopyFrom(c)
    else:
        size = len(first.encode()) + 2 if isinstance(first, str) else 9
        values = [vary_scalar(first, i) for i in range(min(width, MAX_REQUEST_BYTES // size))]
        del items[:]
        items.extend(values)


@st.composite
def _mutate_bytes(draw: st.DrawFn, valid: Message) -> bytes:
    data = bytearray(valid.SerializeToString())
    op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "append", "repeat"]))
    if op == "flip" and data:
        for _ in range(draw(st.integers(1, 4))):
            bit = draw(st.integers(0, len(data) * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
    elif op == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif op == "insert":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif op == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    else:
        data *= draw(st.sampled_from([2, 3, 100]))
    return bytes(data)


def mutations(method: Method, valid: Sequence[Sequence[Message]]) -> st.SearchStrategy[list[Any]]:
    """A mutated copy of one of `valid` (each a list of stream messages);
    items are messages or, for byte-level mutations, raw bytes."""

    @st.composite
    def mutate(draw: st.DrawFn) -> list[Any]:
        base = list(draw(st.sampled_from(list(valid))))
        at = draw(st.integers(0, len(base) - 1))
        if draw(st.integers(0, 2)):  # fields two times in three, bytes the third
            base[at] = draw(_mutate_message(base[at]))
        else:
            base[at] = draw(_mutate_bytes(base[at]))
        return base

    return mutate()


# --- raw bytes -----------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


BAD_UTF8 = [b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"abc\x80", b"\xf4\x90\x80\x80"]


@cache
def _crafted(desc: Descriptor, depth: int = 0) -> tuple[bytes, ...]:
    """Bytes a hostile client would send for `desc`: invalid UTF-8 in each
    string field (also inside sub-messages and map keys), each field with a
    wrong wire type, lengths past the end, nesting past any limit."""
    out: list[bytes] = []
    for f in desc.fields:
        n = f.number
        if f.type == FD.TYPE_STRING:
            out += [_len_field(n, bad) for bad in BAD_UTF8[: 5 if depth == 0 else 1]]
        if f.type == FD.TYPE_MESSAGE and depth < 3:
            out += [_len_field(n, inner) for inner in _crafted(f.message_type, depth + 1)[:12]]
        if depth == 0:
            out += [
                _tag(n, 0) + b"\xff" * 11,  # a varint of 11 bytes
                _tag(n, 2) + _varint(1000) + b"ab",  # length past the end
                _tag(n, 2) + b"\xff\xff\xff\xff\x0f",  # 4 GiB length
                _tag(n, 1) + b"\x00" * 3,  # fixed64 cut short
                _tag(n, 3),  # a group that never ends
                _tag(n, 4),  # an end-group with no start
                _tag(n, 5) + b"\x01\x02\x03\x04",  # fixed32 where none is declared
                _tag(n, 7) + b"\x00",  # wire type 7 does not exist
            ]
    if depth == 0:
        out += [
            b"\x00",
            b"\x80",
            _tag(0, 0) + b"\x01",
            _tag(536870911, 0) + b"\x01",
            _tag(19000, 2) + b"\x00",
            b"\xff" * 32,
        ]
        for path in _self_paths(desc):
            for levels in (101, 1000, 3000):
                out.append(_nested(path, levels))
        for f in desc.fields:
            if f.type == FD.TYPE_MESSAGE and _recursive(f.message_type):
                for path in _self_paths(f.message_type)[:1]:
                    out.append(_len_field(f.number, _nested(path, 1000)))
    return tuple(out)


def _nested(path: Sequence[FieldDescriptor], levels: int) -> bytes:
    data = b""
    for _ in range(levels):
        for f in reversed(path):
            data = _len_field(f.number, data)
    return data


def raw_payloads(method: Method) -> st.SearchStrategy[list[bytes]]:
    one = st.one_of(
        st.binary(max_size=64),
        st.sampled_from(_crafted(method.input)),
        st.builds(
            lambda a, b: a + b, st.sampled_from(_crafted(method.input)), st.binary(max_size=8)
        ),
    )
    if method.client_streaming:
        return st.lists(one, min_size=1, max_size=3)
    return one.map(lambda b: [b])
