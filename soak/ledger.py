"""The ledger of operations and what it allows (pure: no I/O).

Every document write the drivers send is recorded with its outcome:
acknowledged (an OK reply: it took effect between the call's start and its
reply) or unknown (no reply, or an error that does not prove it did not
happen: it may have taken effect, at any moment until the server gave up on
it). The possible final states of a document are therefore the state of the
last acknowledged operation, plus the state of every unknown one that could
have landed after that operation started. An unknown operation may take
effect until `until`: the moment its error came back when the error proves
the server is done with it (an error status the server sent, or a connection
broken because the server died: a killed process commits nothing later), or
its start plus `max_lag` when the client gave up first (deadline exceeded,
cancelled: a server may still be working on it). A document never
acknowledged may also be absent.

Operations on one document come from one driver thread, one at a time (each
driver owns its collections), so nothing else orders them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MetadataValue = str | int | bool | float
Metadata = tuple[tuple[str, MetadataValue], ...]

# A distinctive token per document version: letters and digits only, so
# both keyword indexes (FTS5, PostgreSQL's parser) keep it as one word.
TOKEN = re.compile(r"\bsoaktok[0-9]+x[0-9]+x[0-9]+\b")


def freeze(metadata: Mapping[str, MetadataValue]) -> Metadata:
    return tuple(sorted(metadata.items()))


@dataclass(frozen=True)
class Version:
    """A live document: its text and metadata."""

    text: str
    metadata: Metadata

    @property
    def token(self) -> str | None:
        found = TOKEN.search(self.text)
        return found.group(0) if found else None


# A document's state: a Version, or ABSENT (never written, or deleted).
ABSENT: None = None
State = Version | None


@dataclass(frozen=True)
class Op:
    kind: str
    state: State
    start: float
    acked: bool
    # Unknown operations: the last moment they could take effect.
    until: float = float("inf")


@dataclass
class DocHistory:
    acked: Op | None = None
    unknown: list[Op] = field(default_factory=list)

    def record(self, op: Op) -> None:
        if op.acked:
            if self.acked is None or op.start >= self.acked.start:
                self.acked = op
        else:
            self.unknown.append(op)

    def possible(self) -> set[State]:
        if self.acked is None:
            found: set[State] = {ABSENT}
            since = float("-inf")
        else:
            found = {self.acked.state}
            since = self.acked.start
        found.update(u.state for u in self.unknown if u.until > since)
        return found

    @property
    def ever_acked_live(self) -> bool:
        return self.acked is not None and self.acked.state is not ABSENT


Key = tuple[str, str]  # (collection, document id)


@dataclass
class Ledger:
    """Every document operation sent, by document."""

    docs: dict[Key, DocHistory] = field(default_factory=dict)
    acknowledged: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)

    def record(
        self,
        kind: str,
        collection: str,
        doc_id: str,
        state: State,
        start: float,
        *,
        acked: bool,
        until: float = float("inf"),
    ) -> None:
        """`until`: for an unknown outcome, the last moment it could take
        effect (see the module's docstring)."""
        history = self.docs.setdefault((collection, doc_id), DocHistory())
        history.record(Op(kind, state, start, acked, until))

    def possible(self, collection: str, doc_id: str) -> set[State]:
        history = self.docs.get((collection, doc_id))
        return {ABSENT} if history is None else history.possible()

    def count(self, kind: str, acked: bool) -> None:
        tally = self.acknowledged if acked else self.unknown
        tally[kind] = tally.get(kind, 0) + 1

    def merge(self, other: Ledger) -> None:
        for key, history in other.docs.items():
            mine = self.docs.setdefault(key, DocHistory())
            if history.acked is not None:
                mine.record(history.acked)
            mine.unknown.extend(history.unknown)
        for kind, n in other.acknowledged.items():
            self.acknowledged[kind] = self.acknowledged.get(kind, 0) + n
        for kind, n in other.unknown.items():
            self.unknown[kind] = self.unknown.get(kind, 0) + n

    def expected(self) -> dict[Key, set[State]]:
        return {key: h.possible() for key, h in self.docs.items()}

    def collections(self) -> set[str]:
        return {c for c, _ in self.docs}


# --- the check -----------------------------------------------------------------


@dataclass(frozen=True)
class StoredDoc:
    """A document as the metadata service returned it."""

    text: str
    metadata: Metadata
    generation: int
    content_hash: str
    chunk_count: int
    state: str


@dataclass(frozen=True)
class StoredVector:
    """A vector as the vector service returned it: its id and metadata."""

    id: str
    metadata: Metadata


@dataclass
class CollectionView:
    """What the services hold for one collection (None docs: it is gone)."""

    docs: dict[str, StoredDoc] | None
    vectors: dict[str, StoredVector] = field(default_factory=dict)
    # Document ids an exact search found (keyword: its token; dense: its text).
    keyword_found: set[str] = field(default_factory=set)
    dense_found: set[str] = field(default_factory=set)
    dense_asked: set[str] = field(default_factory=set)
    # Of dense_asked: those whose stored vector is their text's embedding,
    # compared exactly (read back and embedded again), not by a search.
    embedding_matches: set[str] = field(default_factory=set)


@dataclass
class Findings:
    documents_checked: int = 0
    live_documents: int = 0
    ambiguous_documents: int = 0
    lost: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    # Stored exactly right, yet a dense search for the text does not return
    # it: the approximate (HNSW) index's recall, not a disagreement between
    # the stores, so reported beside lost and orphans, not counted in them.
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "documents_checked": self.documents_checked,
            "live_documents": self.live_documents,
            "ambiguous_documents": self.ambiguous_documents,
            "lost": len(self.lost),
            "orphans": len(self.orphans),
            "unreachable": len(self.unreachable),
            "lost_details": self.lost[:50],
            "orphan_details": self.orphans[:50],
            "unreachable_details": self.unreachable[:50],
        }


RESERVED = ("_doc", "_ord", "_inc", "_gen", "_hash")


def vector_id(doc_id: str, ordinal: int) -> str:
    return f"{doc_id}#{ordinal}"


def check(
    expected: Mapping[Key, set[State]],
    views: Mapping[str, CollectionView],
    leftover_vector_collections: Mapping[str, int] | None = None,
) -> Findings:
    """Lost: a document whose stored state is none the ledger allows while
    the ledger says it may be live, or a live document without exactly its
    chunks' vectors (of its current generation and metadata; a one-chunk
    document's vector must be its text's embedding), or one a keyword search
    for its token does not find. Orphans: a document stored that the ledger
    says is deleted, a vector of no live chunk, a vector collection of a
    deleted collection still there (with its vector count). Unreachable: a
    one-chunk document stored exactly right that a dense search for its own
    text does not return."""
    findings = Findings()
    by_collection: dict[str, dict[str, set[State]]] = {}
    for (collection, doc_id), states in expected.items():
        by_collection.setdefault(collection, {})[doc_id] = states
    for collection in sorted(set(by_collection) | set(views)):
        allowed = by_collection.get(collection, {})
        view = views.get(collection, CollectionView(docs=None))
        stored = view.docs or {}
        for doc_id in sorted(set(allowed) | set(stored)):
            findings.documents_checked += 1
            states = allowed.get(doc_id, {ABSENT})
            if len(states) > 1:
                findings.ambiguous_documents += 1
            doc = stored.get(doc_id)
            where = f"{collection}/{doc_id}"
            if doc is None:
                if ABSENT not in states:
                    findings.lost.append(f"{where}: not stored (acknowledged live)")
                continue
            observed = Version(doc.text, doc.metadata)
            if observed not in states:
                if states == {ABSENT}:
                    findings.orphans.append(f"{where}: stored though deleted")
                else:
                    findings.lost.append(f"{where}: stored text/metadata is no acknowledged one")
                continue
            findings.live_documents += 1
            findings.lost.extend(_vector_problems(where, doc_id, doc, view))
            if observed.token is not None and doc_id not in view.keyword_found:
                findings.lost.append(f"{where}: keyword search for {observed.token} misses it")
            # (A missing vector is reported above, once.)
            if doc_id in view.dense_asked and vector_id(doc_id, 0) in view.vectors:
                if doc_id not in view.embedding_matches:
                    findings.lost.append(f"{where}: its vector is not its text's embedding")
                elif doc_id not in view.dense_found:
                    findings.unreachable.append(f"{where}: dense search for its text misses it")
        live_ids = {
            vector_id(doc_id, k) for doc_id, doc in stored.items() for k in range(doc.chunk_count)
        }
        for vid in sorted(set(view.vectors) - live_ids):
            findings.orphans.append(f"{collection}: vector {vid} of no live chunk")
    for name, count in sorted((leftover_vector_collections or {}).items()):
        findings.orphans.append(f"vector collection {name} of a deleted collection ({count})")
    return findings


def _vector_problems(where: str, doc_id: str, doc: StoredDoc, view: CollectionView) -> list[str]:
    problems = []
    user = dict(doc.metadata)
    for ordinal in range(doc.chunk_count):
        vid = vector_id(doc_id, ordinal)
        vector = view.vectors.get(vid)
        if vector is None:
            problems.append(f"{where}: vector {vid} missing")
            continue
        meta = dict(vector.metadata)
        own = {k: v for k, v in meta.items() if k not in RESERVED and not k.startswith("_")}
        if own != user:
            problems.append(f"{where}: vector {vid} carries metadata {own}, not {user}")
        if meta.get("_gen") != doc.generation:
            problems.append(f"{where}: vector {vid} of generation {meta.get('_gen')}")
        digest = str(meta.get("_hash", ""))
        if not digest or not doc.content_hash.startswith(digest):
            problems.append(f"{where}: vector {vid} of another text ({digest})")
    return problems


def summarize(kinds: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for kind in kinds:
        out[kind] = out.get(kind, 0) + 1
    return out
