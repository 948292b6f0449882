"""Driver threads: each one a user of the SDK (askmojo.client.Client) with
collections of its own, sending a seeded random mix of writes and searches
and recording every document operation in its ledger.

The operations a driver sends come from its seeded generator alone (what it
last *sent* for a document, never what the service answered, decides an
unchanged re-send), so a seed gives the same sequence of requests. What a
failure adds (re-creating a collection found missing, re-sending a call
whose reply was lost) comes on top and is recorded like any other call.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from askmojo.client import Client
from askmojo.client.errors import AlreadyExists, AskmojoError, NotFound
from askmojo.client.types import UpsertResult, UpsertState
from soak.ledger import ABSENT, Ledger, Metadata, State, Version, freeze

_T = TypeVar("_T")

_VOCABULARY = (
    "river mountain engine protocol garden theorem violin harbor glacier compiler lantern "
    "orchard circuit meadow galaxy ledger canyon falcon prism quarry beacon cobalt dune "
    "ember fjord granite horizon island jasmine kelp lagoon marble nebula oasis pebble "
    "quartz reef saffron tundra umber valley willow yarrow zephyr anchor bramble cedar"
)
WORDS = tuple(_VOCABULARY.split())

COLLECTIONS_PER_DRIVER = 2
DOCS_PER_COLLECTION = 16
# A user sends a call that failed again, a few times, backing off (about 15 s
# in all: a restarted service serves again within that, most of the time).
ATTEMPTS = 6
CALL_TIMEOUT = 20.0
# Seconds after its start a call the client gave up on (deadline exceeded,
# cancelled) may still take effect on a server that is still working on it:
# the call's deadline, SQLite's busy timeout and a margin.
MAX_LAG = CALL_TIMEOUT + 20.0 + 20.0
_LATE = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

# (kind, weight)
MIX = (
    ("upsert", 26),
    ("ingest", 10),
    ("update_text", 14),
    ("update_unchanged", 8),
    ("update_metadata", 10),
    ("delete_documents", 10),
    ("delete_by_filter", 3),
    ("delete_collection", 2),
    ("search", 18),
)


@dataclass
class Driver:
    index: int
    seed: int
    address: str
    api_key: str
    ledger: Ledger = field(default_factory=Ledger)
    # Every vector collection name seen per collection (the checker looks
    # for leftovers of deleted ones).
    vector_names: dict[str, set[str]] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    _intent: dict[tuple[str, str], State] = field(default_factory=dict)
    _counter: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(f"driver-{self.seed}-{self.index}")
        self.collections = [f"soak{self.index}c{k}" for k in range(COLLECTIONS_PER_DRIVER)]
        self.ids = [f"doc{j:02d}" for j in range(DOCS_PER_COLLECTION)]
        self.client: Client | None = None

    # --- content ---------------------------------------------------------------

    def _text(self) -> str:
        self._counter += 1
        long = self.rng.random() < 0.15
        count = self.rng.randint(150, 320) if long else self.rng.randint(8, 40)
        words = [self.rng.choice(WORDS) for _ in range(count)]
        token = f"soaktok{self.seed}x{self.index}x{self._counter}"
        words.insert(self.rng.randrange(len(words) + 1), token)
        return " ".join(words).capitalize() + "."

    def _metadata(self) -> Metadata:
        self._counter += 1
        return freeze(
            {
                "v": self._counter,
                "kind": self.rng.choice(["alpha", "beta", "gamma"]),
                "flag": self.rng.random() < 0.5,
            }
        )

    # --- the run ---------------------------------------------------------------

    def run(self, stop: threading.Event, client: Client | None = None) -> None:
        """Sends operations until `stop` is set (`client`: a stand-in for tests)."""
        if client is None:
            with Client(self.address, api_key=self.api_key, timeout=CALL_TIMEOUT) as own:
                self.run(stop, own)
            return
        self.client = client
        for name in self.collections:
            self._ensure_collection(name)
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        while not stop.is_set():
            kind = self.rng.choices(kinds, weights)[0]
            collection = self.rng.choice(self.collections)
            self.operations.append(f"{kind}:{collection}")
            getattr(self, f"_{kind}")(collection)

    def _ensure_collection(self, name: str) -> None:
        assert self.client is not None
        for attempt in range(ATTEMPTS * 3):
            try:
                made = self.client.create_collection(name)
                self.ledger.count("create_collection", True)
                self.vector_names.setdefault(name, set()).add(made.vector_collection)
                return
            except AlreadyExists:
                try:
                    found = self.client.collection(name)
                except AskmojoError as exc:
                    self._failed("create_collection", exc)
                    continue
                self.vector_names.setdefault(name, set()).add(found.vector_collection)
                return
            except AskmojoError as exc:
                self._failed("create_collection", exc)
            self._pause(min(attempt, 3))
        raise RuntimeError(f"driver {self.index}: could not create {name}")

    def _failed(self, kind: str, exc: AskmojoError) -> None:
        self.ledger.count(kind, False)
        code = f"{kind}:{exc.code.name if exc.code else type(exc).__name__}"
        self.errors[code] = self.errors.get(code, 0) + 1

    def _pause(self, attempt: int) -> None:
        # A user's back-off before sending again (not an ordering of events).
        time.sleep(min(4.0, 0.5 * 2**attempt))

    @staticmethod
    def _until(exc: AskmojoError | None, start: float) -> float:
        """The last moment a call that failed with `exc` could take effect."""
        if exc is not None and (exc.code is None or exc.code in _LATE):
            return start + MAX_LAG
        return time.monotonic()  # the server answered, or died: it is done

    def _collection_missing(self, collection: str, start: float) -> None:
        """NOT_FOUND: the collection is gone (a delete that landed after its
        reply was lost): every document of it is absent now; create it again."""
        for doc_id in self.ids:
            self.ledger.record("observed_missing", collection, doc_id, ABSENT, start, acked=True)
        self._ensure_collection(collection)

    # --- writes ----------------------------------------------------------------

    def _write(self, kind: str, collection: str, docs: dict[str, Version]) -> None:
        """Sends documents (upsert/ingest) until acknowledged, ATTEMPTS at most."""
        for doc_id, version in docs.items():
            self._intent[(collection, doc_id)] = version
        waiting = dict(docs)
        for attempt in range(ATTEMPTS):
            start = time.monotonic()
            try:
                results, error = self._results(kind, collection, waiting)
            except NotFound:
                self._collection_missing(collection, start)
                continue
            except AskmojoError as exc:
                self._failed(kind, exc)
                until = self._until(exc, start)
                for doc_id, version in waiting.items():
                    self.ledger.record(
                        kind, collection, doc_id, version, start, acked=False, until=until
                    )
                self._pause(attempt)
                continue
            until = self._until(error, start)
            missing_collection = False
            for doc_id, version in list(waiting.items()):
                result = results.get(doc_id)
                if result is not None and result.state is not UpsertState.FAILED:
                    self.ledger.record(kind, collection, doc_id, version, start, acked=True)
                    del waiting[doc_id]
                elif result is not None and isinstance(result.error, NotFound):
                    missing_collection = True
                else:  # FAILED (stored or not: the status does not say) or no answer
                    self.ledger.record(
                        kind, collection, doc_id, version, start, acked=False, until=until
                    )
            if missing_collection:
                self._collection_missing(collection, start)
            if not waiting:
                self.ledger.count(kind, True)
                return
            if error is not None:
                self._failed(kind, error)
            else:
                self.ledger.count(kind, False)
            self._pause(attempt)

    def _results(
        self, kind: str, collection: str, docs: dict[str, Version]
    ) -> tuple[dict[str, UpsertResult], AskmojoError | None]:
        """The results answered, and the error that cut a stream short."""
        assert self.client is not None
        payload = [
            {"id": doc_id, "text": v.text, "metadata": dict(v.metadata)}
            for doc_id, v in docs.items()
        ]
        if kind == "ingest":
            found: dict[str, UpsertResult] = {}
            try:
                for result in self.client.ingest(
                    collection, payload, batch_size=3, timeout=CALL_TIMEOUT * 2
                ):
                    found[result.id] = result
            except AskmojoError as exc:
                if not found:
                    raise
                # Acknowledged batches stand; the rest is unknown (no answer).
                return found, exc
            return found, None
        return {r.id: r for r in self.client.upsert(collection, payload)}, None

    def _upsert(self, collection: str, kind: str = "upsert", most: int = 4) -> None:
        chosen = self.rng.sample(self.ids, self.rng.randint(1, most))
        docs = {doc_id: Version(self._text(), self._metadata()) for doc_id in chosen}
        self._write(kind, collection, docs)

    def _ingest(self, collection: str) -> None:
        self._upsert(collection, "ingest", 8)

    def _update_text(self, collection: str) -> None:
        doc_id = self.rng.choice(self.ids)
        old = self._intent.get((collection, doc_id))
        metadata = old.metadata if old is not None else self._metadata()
        self._write("update_text", collection, {doc_id: Version(self._text(), metadata)})

    def _update_unchanged(self, collection: str) -> None:
        doc_id = self.rng.choice(self.ids)
        old = self._intent.get((collection, doc_id))
        version = old if old is not None else Version(self._text(), self._metadata())
        self._write("update_unchanged", collection, {doc_id: version})

    def _update_metadata(self, collection: str) -> None:
        doc_id = self.rng.choice(self.ids)
        old = self._intent.get((collection, doc_id))
        text = old.text if old is not None else self._text()
        self._write("update_metadata", collection, {doc_id: Version(text, self._metadata())})

    def _delete_documents(self, collection: str) -> None:
        assert self.client is not None
        chosen = self.rng.sample(self.ids, self.rng.randint(1, 3))
        for doc_id in chosen:
            self._intent[(collection, doc_id)] = ABSENT
        for attempt in range(ATTEMPTS):
            start = time.monotonic()
            try:
                self.client.delete(collection, chosen)
            except NotFound:
                self._collection_missing(collection, start)
                return  # every document of it is absent already
            except AskmojoError as exc:
                self._failed("delete_documents", exc)
                until = self._until(exc, start)
                for doc_id in chosen:
                    self.ledger.record(
                        "delete", collection, doc_id, ABSENT, start, acked=False, until=until
                    )
                self._pause(attempt)
                continue
            for doc_id in chosen:
                self.ledger.record("delete", collection, doc_id, ABSENT, start, acked=True)
            self.ledger.count("delete_documents", True)
            return

    def _delete_by_filter(self, collection: str) -> None:
        """Deletes the documents whose `kind` is one value. Per document:
        absent after an acknowledged delete when every state it may be in
        matches; untouched when none does; either when some do (or the
        outcome is unknown)."""
        assert self.client is not None
        kind = self.rng.choice(["alpha", "beta", "gamma"])
        for doc_id in self.ids:
            intent = self._intent.get((collection, doc_id))
            if intent is not None and dict(intent.metadata).get("kind") == kind:
                self._intent[(collection, doc_id)] = ABSENT
        for attempt in range(ATTEMPTS):
            start = time.monotonic()
            before = {doc_id: self.ledger.possible(collection, doc_id) for doc_id in self.ids}
            try:
                self.client.delete(collection, where={"kind": kind})
            except NotFound:
                self._collection_missing(collection, start)
                return
            except AskmojoError as exc:
                self._failed("delete_by_filter", exc)
                until = self._until(exc, start)
                for doc_id, states in before.items():
                    if any(_matches(s, kind) for s in states):
                        self.ledger.record(
                            "delete_by_filter",
                            collection,
                            doc_id,
                            ABSENT,
                            start,
                            acked=False,
                            until=until,
                        )
                self._pause(attempt)
                continue
            until = time.monotonic()
            for doc_id, states in before.items():
                matching = [_matches(s, kind) for s in states if s is not ABSENT]
                if matching and all(matching):
                    self.ledger.record(
                        "delete_by_filter", collection, doc_id, ABSENT, start, acked=True
                    )
                elif any(matching):
                    self.ledger.record(
                        "delete_by_filter",
                        collection,
                        doc_id,
                        ABSENT,
                        start,
                        acked=False,
                        until=until,
                    )
            self.ledger.count("delete_by_filter", True)
            return

    def _delete_collection(self, collection: str) -> None:
        assert self.client is not None
        for doc_id in self.ids:
            self._intent[(collection, doc_id)] = ABSENT
        for attempt in range(ATTEMPTS):
            start = time.monotonic()
            try:
                self.client.delete_collection(collection)
            except NotFound:
                pass  # a first attempt did it
            except AskmojoError as exc:
                self._failed("delete_collection", exc)
                until = self._until(exc, start)
                for doc_id in self.ids:
                    self.ledger.record(
                        "drop", collection, doc_id, ABSENT, start, acked=False, until=until
                    )
                self._pause(attempt)
                continue
            for doc_id in self.ids:
                self.ledger.record("drop", collection, doc_id, ABSENT, start, acked=True)
            self.ledger.count("delete_collection", True)
            break
        self._ensure_collection(collection)

    def _search(self, collection: str) -> None:
        assert self.client is not None
        query = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, 6)))
        mode = self.rng.choice(["hybrid", "dense", "keyword"])
        try:
            self.client.search(collection, query, top_k=5, mode=mode)
        except AskmojoError as exc:
            self._failed("search", exc)
            return
        self.ledger.count("search", True)


def _matches(state: State, kind: str) -> bool:
    return state is not ABSENT and dict(state.metadata).get("kind") == kind
