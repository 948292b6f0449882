"""Parsing and rendering for the `askmojo` CLI: pure functions of plain values
and the SDK's result types (no channel, no console), so each is unit-tested on
its own."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from askmojo.client import (
    Collection,
    ReconcileReport,
    SearchHit,
    Stats,
    UpsertResult,
)
from askmojo.common.filters import (
    METADATA_KEY_PATTERN,
    METADATA_KEY_RULE,
    AllOf,
    Condition,
    FilterNode,
    MetadataScalar,
    Op,
    filter_to_proto,
)
from askmojo.common.v1 import common_pb2

SNIPPET_CHARS = 100
SHOWN_FAILURES = 5
# The order of the ingest summary; every state is always shown, 0 included,
# so a script can rely on the line's shape.
SUMMARY_STATES = ("indexed", "unchanged", "pending", "failed")

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_WHITESPACE = re.compile(r"\s+")
_BATCH_FIELD = re.compile(r"^documents\[\d+\]\.")


class UsageError(ValueError):
    """Bad command-line input: exit code 2."""


# --- search --where ---------------------------------------------------------


def parse_value(raw: str) -> MetadataScalar:
    """A typed metadata value: true/false are booleans, integers and decimals
    numbers (the metadata service compares numbers as numbers), anything else
    a string. Quotes force a string: `code='007'` (quoted in the shell too)."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if math.isfinite(number):
            return number
    return raw


def parse_where(expression: str) -> Condition:
    """`key=value` as an EQ condition."""
    key, sep, raw = expression.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UsageError(f"--where {expression!r}: expected key=value")
    if not METADATA_KEY_PATTERN.fullmatch(key):
        raise UsageError(f"--where {expression!r}: a key is {METADATA_KEY_RULE}")
    return Condition(key=key, op=Op.EQ, values=(parse_value(raw),))


def build_filter(expressions: Sequence[str]) -> common_pb2.Filter | None:
    """None for no --where; one condition as itself; several combined with
    `all` (every one must hold)."""
    conditions = [parse_where(e) for e in expressions]
    if not conditions:
        return None
    node: FilterNode = conditions[0] if len(conditions) == 1 else AllOf(tuple(conditions))
    return filter_to_proto(node)


# --- small renderings --------------------------------------------------------


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line of at most `limit` characters: a chunk's newlines and runs of
    spaces would otherwise break the table's rows apart."""
    flat = _WHITESPACE.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    return flat[: limit - 1].rstrip() + "…"


def human_bytes(count: int) -> str:
    """1024-based, as `ls -h` and `du -h` do."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --- ingest -------------------------------------------------------------------


@dataclass
class IngestTally:
    """Per-state counts and failures of one ingest run."""

    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    # Chunks longer than the model's window (only their start was embedded).
    truncated_chunks: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failed(self) -> int:
        return self.counts["failed"]

    def add_failure(self, doc_id: str, reason: str) -> None:
        self.counts["failed"] += 1
        self.failures.append((doc_id, reason))

    def add_result(self, result: UpsertResult) -> None:
        """One document's outcome (a document of a refused batch fails with
        the batch's reason: the SDK gives each its own result)."""
        if not result.ok:
            self.add_failure(result.id, result_text(result))
        else:
            self.counts[result.state.value] += 1
            self.truncated_chunks += result.truncated_chunks

    def add_results(self, results: Iterable[UpsertResult]) -> None:
        for result in results:
            self.add_result(result)


def result_text(result: UpsertResult) -> str:
    """'INVALID_ARGUMENT: text: must not be blank' for a failed document,
    without the position in a batch the user never saw ('documents[3].')."""
    message = _BATCH_FIELD.sub("", result.message) or "no message"
    return f"{result.code.name}: {message}"


def ingest_summary(
    tally: IngestTally,
    collection: str,
    seconds: float,
    *,
    ignored: int = 0,
    ignored_explicit: Sequence[str] = (),
    shown_failures: int = SHOWN_FAILURES,
) -> list[str]:
    """The lines printed after an ingest: counts per state, then the first
    failures with their reasons."""
    rate = tally.total / seconds if seconds > 0 else 0.0
    counts = ", ".join(f"{tally.counts[state]} {state}" for state in SUMMARY_STATES)
    noun = "document" if tally.total == 1 else "documents"
    lines = [
        f"{tally.total} {noun} into {collection} in {seconds:.1f} s ({rate:.1f} docs/s): {counts}"
    ]
    if tally.truncated_chunks:
        lines.append(truncation_warning(tally.truncated_chunks))
    if ignored:
        lines.append(f"{ignored} other files ignored (only .txt and .md are ingested)")
    for path in ignored_explicit:
        lines.append(f"skipped {path}: only .txt and .md files are ingested")
    if tally.failures:
        lines.append("failures:")
        lines.extend(f"  {doc_id}: {reason}" for doc_id, reason in tally.failures[:shown_failures])
        if len(tally.failures) > shown_failures:
            lines.append(f"  … and {len(tally.failures) - shown_failures} more")
    return lines


def truncation_warning(chunks: int) -> str:
    """Only the start of such a chunk was embedded: a search cannot find
    what its end says."""
    noun, were = ("chunk", "was") if chunks == 1 else ("chunks", "were")
    return (
        f"{chunks} {noun} {were} longer than the model's window and {were} truncated; "
        "use smaller chunk_size"
    )


# --- tables -------------------------------------------------------------------
# Data goes into cells as Text, never as str: rich would read "[x]" in a
# Markdown snippet or a file name as markup, and drop it or fail on it.


def search_table(
    hits: Sequence[SearchHit], query: str, collection: str, *, ranks: bool = False
) -> Table:
    """With `ranks`, a last column shows each retriever's rank of the hit
    ("-": that retriever did not find it, or did not run)."""
    table = Table(title=Text(f"{len(hits)} results for {query!r} in {collection}"))
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("snippet", overflow="fold")
    if ranks:
        table.add_column("dense/keyword #", justify="right")
    for rank, hit in enumerate(hits, start=1):
        cells: list[str | Text] = [
            str(rank),
            f"{hit.score:.3f}",
            Text(hit.document_id),
            Text(snippet(hit.text)),
        ]
        if ranks:
            cells.append(f"{hit.dense_rank or '-'}/{hit.keyword_rank or '-'}")
        table.add_row(*cells)
    return table


def degraded_note(reason: str) -> str:
    return f"degraded: keyword only ({reason or 'the vector service is unavailable'})"


def collections_table(collections: Sequence[Collection]) -> Table:
    table = Table()
    table.add_column("name")
    table.add_column("documents", justify="right")
    table.add_column("chunks", justify="right")
    table.add_column("model")
    table.add_column("dim", justify="right")
    table.add_column("chunking", justify="right")
    for c in collections:
        table.add_row(
            Text(c.name),
            str(c.document_count),
            str(c.chunk_count),
            c.model,
            str(c.dimension),
            f"{c.chunk_size}/{c.chunk_overlap} {c.chunk_unit}",
        )
    return table


def stats_rows(stats: Stats) -> list[tuple[str, str]]:
    by_state = dict(stats.documents_by_state)
    total = sum(by_state.values())
    states = ", ".join(
        f"{by_state.get(name, 0)} {name}" for name in ("indexed", "pending", "failed")
    )
    # Any state this client does not know yet is still shown.
    states += "".join(
        f", {count} {name}"
        for name, count in by_state.items()
        if name not in ("indexed", "pending", "failed")
    )
    db = stats.database
    database = f"{db.dialect or 'unknown'}, {human_bytes(db.database_bytes)}"
    if db.journal_mode:
        database += f", journal {db.journal_mode} ({human_bytes(db.wal_bytes)} WAL)"
    pool = stats.pool
    rows = [
        ("documents", f"{total} ({states})"),
        ("chunks", str(stats.chunk_count)),
        ("keyword index", human_bytes(stats.keyword_index_bytes)),
        (
            "truncated chunks",
            f"{stats.truncated_chunk_count} (longer than the model's window; "
            "only their start is searchable)"
            if stats.truncated_chunk_count
            else "0",
        ),
        ("database", database),
        (
            "pool",
            f"{pool.pool_class or 'unknown'}: size {pool.size}, {pool.checked_out} checked out, "
            f"{pool.checked_in} idle, overflow {pool.overflow}/{pool.max_overflow}",
        ),
        ("worker pid", str(stats.worker_pid)),
    ]
    if db.write_transactions:
        per_commit = db.writes / db.write_transactions
        rows.append(
            (
                "writes",
                f"{db.writes} in {db.write_transactions} transactions "
                f"({per_commit:.2f} per commit, this worker)",
            )
        )
    return rows


def stats_table(stats: Stats, collection: str) -> Table:
    table = Table(title=Text(f"collection {collection}" if collection else "all collections"))
    table.add_column("")
    table.add_column("")
    table.show_header = False
    for name, value in stats_rows(stats):
        table.add_row(name, Text(value))
    return table


def reconcile_line(response: ReconcileReport, collection: str) -> str:
    unverified = response.unverified_vectors
    if response.dry_run:
        return (
            f"dry run on {collection}: would re-index {response.missing_vectors} missing vectors, "
            f"remove {response.orphan_vectors} orphan vectors, "
            f"replace {response.stale_vectors} stale vectors, "
            f"resume {response.pending_resumed} pending or failed chunks"
            + (f", re-embed {unverified} unverified vectors" if unverified else "")
        )
    return (
        f"reconciled {collection}: {response.missing_vectors} missing vectors re-indexed, "
        f"{response.orphan_vectors} orphan vectors removed, "
        f"{response.stale_vectors} stale vectors replaced, "
        f"{response.pending_resumed} pending or failed chunks resumed"
        + (f", {unverified} unverified vectors re-embedded" if unverified else "")
    )


# --- errors -------------------------------------------------------------------

# gRPC core's words for "no connection could be made": DNS, refused, reset,
# no route. The service's own UNAVAILABLE (say, its database is down) says
# something else and is shown as it is.
_CONNECT_FAILURES = (
    "failed to connect",
    "dns resolution failed",
    "errors resolving",
    "connection refused",
    "connections to all backends failing",
    "name resolution",
    "no route to host",
    "connection reset",
    "socket closed",
    "failed to pick subchannel",
)


def describe_rpc_error(code_name: str, details: str, address: str, timeout: float | None) -> str:
    """The one line shown for a failed call (without the 'askmojo: ' prefix)."""
    details = " ".join(details.split()) or "no details"
    if code_name == "UNAVAILABLE" and any(w in details.lower() for w in _CONNECT_FAILURES):
        return f"cannot reach the metadata service at {address} (is `make run` running?)"
    if code_name == "DEADLINE_EXCEEDED" and timeout:
        return f"DEADLINE_EXCEEDED: no answer within {timeout:g} s (a longer --timeout may help)"
    return f"{code_name}: {details}"
