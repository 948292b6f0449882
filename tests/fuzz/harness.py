"""Sending fuzzed requests to the live pair and judging the answers.

Every call goes over a real socket with identity serializers (requests are
serialized here, so raw bytes and messages travel the same way) and a
deadline. `judge` is the oracle; `Findings` keeps one reproduction per
distinct failure (the smallest request seen), so a run reports every kind
of failure at once instead of stopping, and shrinking, at the first.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.fuzz.strategies import Method

FD = FieldDescriptor

# Generous: a refusal takes milliseconds; the slowest valid call (embedding a
# few hundred texts on one worker of a shared 2-core machine) takes seconds.
CALL_TIMEOUT = 30.0
# Methods that may legitimately wait out a deadline (they do bounded but
# possibly long work on behalf of the caller).
MAY_WAIT = {"MetadataService.Reconcile"}
MAX_MESSAGE = 1024
# What a status message must never carry: Python's own words for its
# objects and failures, or the internals of the services' dependencies.
_LEAKS = re.compile(
    r"<class '|Traceback \(most recent|File \"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b"
    r"|\bsqlite3?\.|\bsqlalchemy\b|\bpsycopg\b|\bchromadb\.|\bgoogle\.protobuf\b"
    r"|\[SQL:|Stream removed|Sent message larger than max"
)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]


# --- describing a request ----------------------------------------------------

REPRO_CHARS = 300


def _short_str(value: str | bytes) -> str:
    if len(value) <= 40:
        return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    head = value[:12]
    runs = len(set(value)) == 1
    shown = json.dumps(head, ensure_ascii=False) if isinstance(head, str) else repr(head)
    unit = "chars" if isinstance(value, str) else "bytes"
    return f"{shown}{'*' if runs else '…'}[{len(value)} {unit}]"


def _scalar_text(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        return _short_str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def describe(msg: Message, depth: int = 0) -> str:
    """Text format with long strings, long lists and deep nesting abbreviated:
    `filter { any { filters[10000 items, first] { condition {...} } } }`."""
    if depth > 6:
        return "…"
    parts: list[str] = []
    for f, value in msg.ListFields():
        if f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            items = list(value.items())
            shown = ", ".join(
                f"{_scalar_text(k)}: "
                + (f"{{{describe(v, depth + 1)}}}" if isinstance(v, Message) else _scalar_text(v))
                for k, v in items[:3]
            )
            more = f", …{len(items)} keys" if len(items) > 3 else ""
            parts.append(f"{f.name} {{{shown}{more}}}")
        elif f.is_repeated:
            n = len(value)
            label = f"{f.name}[{n}]" if n > 3 else f.name
            shown_items = value[:1] if n > 3 else value
            for item in shown_items:
                if isinstance(item, Message):
                    parts.append(f"{label} {{{describe(item, depth + 1)}}}")
                else:
                    parts.append(f"{label}: {_scalar_text(item)}")
        elif f.type == FD.TYPE_MESSAGE:
            parts.append(f"{f.name} {{{describe(value, depth + 1)}}}")
        elif f.type == FD.TYPE_ENUM:
            known = f.enum_type.values_by_number.get(value)
            parts.append(f"{f.name}: {known.name if known else value}")
        else:
            parts.append(f"{f.name}: {_scalar_text(value)}")
    return " ".join(parts)


def repro(method: Method, payload: Sequence[Message | bytes]) -> str:
    shown = []
    for item in payload:
        if isinstance(item, Message):
            text = describe(item)
        else:
            text = f"raw {len(item)} bytes {item[:48].hex()}{'…' if len(item) > 48 else ''}"
        shown.append(text[:REPRO_CHARS] + ("…" if len(text) > REPRO_CHARS else ""))
    stream = " | ".join(f"[{i}] {s}" for i, s in enumerate(shown))
    return f"{method.label}({stream if method.client_streaming else shown[0]})"


def payload_size(payload: Sequence[Message | bytes]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.ByteSize() for p in payload)


# --- findings ----------------------------------------------------------------


@dataclass
class Finding:
    method: str
    kind: str
    problem: str
    repro: str
    size: int
    count: int = 1


def _normalized(text: str) -> str:
    text = re.sub(r"\(?ref [0-9a-f]+\)?", "ref", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return re.sub(r"\d+", "N", text)[:70]


@dataclass
class Findings:
    by_key: dict[tuple[str, str], Finding] = field(default_factory=dict)
    # method -> status code name -> calls; method -> (seconds, repro) of its slowest call
    codes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    slowest: dict[str, tuple[float, str]] = field(default_factory=dict)

    def count(self, method: Method, outcome: Outcome, payload: Sequence[Any]) -> None:
        self.codes[method.label][outcome.code.name] += 1
        self.codes[method.label]["seconds"] += round(outcome.seconds, 3)  # type: ignore[assignment]
        if outcome.seconds > self.slowest.get(method.label, (0.0, ""))[0]:
            self.slowest[method.label] = (round(outcome.seconds, 2), repro(method, payload))

    def add(
        self, method: Method, kind: str, problem: str, payload: Sequence[Any]
    ) -> tuple[str, str]:
        key = (method.label, _normalized(problem))
        size = payload_size(payload)
        seen = self.by_key.get(key)
        if seen is None:
            self.by_key[key] = Finding(method.label, kind, problem, repro(method, payload), size)
            return key
        seen.count += 1
        if size < seen.size:  # keep the smallest reproduction
            seen.repro, seen.size, seen.problem, seen.kind = (
                repro(method, payload),
                size,
                problem,
                kind,
            )
        return key

    def report(self, only: Iterable[Finding] | None = None) -> str:
        items = list(self.by_key.values() if only is None else only)
        return "\n".join(
            f"- {f.method} [{f.kind}] x{f.count}: {f.problem}\n    repro: {f.repro}" for f in items
        )

    def dump(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as out:
            for f in self.by_key.values():
                out.write(json.dumps(f.__dict__) + "\n")
            for method, codes in self.codes.items():
                slow = self.slowest.get(method)
                out.write(json.dumps({"stats": method, "codes": codes, "slowest": slow}) + "\n")


# --- the oracle ----------------------------------------------------------------


def _status_problems(code: grpc.StatusCode, message: str, method: Method) -> list[str]:
    problems = []
    shown = message[:200] + ("…" if len(message) > 200 else "")
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        problems.append(f"{code.name} {shown!r}")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED and method.label not in MAY_WAIT:
        problems.append(f"DEADLINE_EXCEEDED after {CALL_TIMEOUT:.0f} s {shown!r}")
    elif code is grpc.StatusCode.UNAVAILABLE:
        problems.append(f"UNAVAILABLE with both services up {shown!r}")
    size = len(message.encode("utf-8", "replace"))
    if size > MAX_MESSAGE:
        problems.append(f"{code.name} message of {size} bytes: {shown!r}")
    leak = _LEAKS.search(message)
    if leak:
        problems.append(f"{code.name} message leaks {leak.group(0)!r}: {shown!r}")
    return problems


def _foreign_fields(status: Any, method: Method) -> list[str]:
    """Field violations that name no field of the caller's request (e.g. a
    downstream service's `texts[0]` passed through): the caller cannot act
    on them."""
    # "request": the whole request (bytes that do not decode as one).
    names = {*method.input.fields_by_name, "request"}
    out = []
    for detail in status.details:
        if not detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            continue
        bad = error_details_pb2.BadRequest()
        detail.Unpack(bad)
        for violation in bad.field_violations:
            top = re.split(r"[.\[]", violation.field, maxsplit=1)[0]
            if top and top not in names:
                out.append(
                    f"field violation names {violation.field[:60]!r}, not a request field"
                    f" ({violation.description[:120]!r})"
                )
    return out


def _item_statuses(msg: Message, depth: int = 0) -> Iterator[Message]:
    """Every google.rpc.Status inside a response (per-item results)."""
    if depth > 4:
        return
    for f, value in msg.ListFields():
        if f.type != FD.TYPE_MESSAGE or f.message_type.GetOptions().map_entry:
            continue
        for sub in value if f.is_repeated else [value]:
            if f.message_type.full_name == "google.rpc.Status":
                yield sub
            else:
                yield from _item_statuses(sub, depth + 1)


def judge_response(method: Method, data: bytes) -> list[str]:
    try:
        response = method.response_class.FromString(data)
    except DecodeError as exc:  # pragma: no cover - would be a server bug
        return [f"undecodable response ({exc})"]
    problems = []
    for status in _item_statuses(response):
        if status.code == 0:
            continue
        try:
            code = grpc.StatusCode[_CODE_NAMES[status.code]]
        except (KeyError, IndexError):
            problems.append(
                f"item status with unknown code {status.code}: {status.message[:200]!r}"
            )
            continue
        problems += [f"item {p}" for p in _status_problems(code, status.message, method)]
        problems += [f"item {p}" for p in _foreign_fields(status, method)]
    return problems


_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str
    problems: list[str]
    seconds: float


def invoke(channel: grpc.Channel, method: Method, payload: Sequence[Message | bytes]) -> Outcome:
    """One call; every item is sent as bytes (messages serialized here)."""
    data = [p if isinstance(p, bytes) else p.SerializeToString() for p in payload]
    started = time.monotonic()
    problems: list[str] = []
    try:
        if method.client_streaming or method.server_streaming:
            call = channel.stream_stream(method.path)(iter(data), timeout=CALL_TIMEOUT)
            for reply in call:
                problems += judge_response(method, reply)
        else:
            reply = channel.unary_unary(method.path)(data[0], timeout=CALL_TIMEOUT)
            problems += judge_response(method, reply)
        code, message = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, message = exc.code(), exc.details() or ""
        problems += _status_problems(code, message, method)
        try:
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        except ValueError:  # details that contradict the status line
            problems.append(f"{code.name} with status details that do not match it")
            status = None
        if status is not None:
            problems += _foreign_fields(status, method)
    return Outcome(code, message, problems, time.monotonic() - started)


# --- time ----------------------------------------------------------------------


class Budget:
    """FUZZ_SECONDS shared fairly by the fuzz tests still to run: each gets
    the time left divided by the tests left, so a slow method leaves the
    others their share."""

    def __init__(self, seconds: float, tests: int) -> None:
        self.seconds = seconds
        self.tests_left = tests
        self.deadline: float | None = None
        self.test_deadline = math.inf

    def start_test(self) -> None:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.seconds
        share = max(0.0, self.deadline - now) / max(1, self.tests_left)
        self.tests_left -= 1
        self.test_deadline = now + max(share, 0.5)

    def exhausted(self) -> bool:
        return time.monotonic() > self.test_deadline


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "") or default)
