"""A Hypothesis state machine drives a real metadata service over gRPC
(issue #13: the catalog against a simple model, on SQLite and PostgreSQL).

The model is a plain dict of collections, each a dict of documents (id ->
text, metadata, generation, chunk count), and its own evaluation of the
filters. Every rule makes the same change to the model and checks each
answer against it: per-item upsert results (new, UNCHANGED, changed text,
metadata only, invalid, duplicate ids), gets, deletes by ids and by filter,
collections deleted and created again under the same name (their documents
never come back), every page of ListDocuments and ListCollections walked with
small page sizes (union = the model, no duplicate, ordered by id or name),
page tokens replayed on another query, counts and stats; every error's code,
its message and its field violations.

No vector service: VECTOR_SERVICE_ADDRESS is empty, which the service
supports (documents are stored and stay PENDING, nothing waits on it), so
the catalog is tested alone and quickly. Small limits (pages of 3 by
default, at most 5; deletes by filter 2 documents per transaction; 6
documents per batch; a 20 KiB message limit) make every path that splits
work (paging, byte-bounded pages, batched deletes) run in a few documents.

One server per backend serves every example; each example starts by
deleting every collection through the API (a handful), so examples never
see each other. STATEFUL_EXAMPLES and STATEFUL_STEPS scale the run (the
defaults keep both backends within ~45 s of `make test`); STATEFUL_RANDOM=1
draws new examples (derandomized otherwise). No example database is
written (database=None), as in tests/fuzz.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import grpc
import pytest
import sqlalchemy
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from askmojo.common.filters import MetadataScalar, metadata_to_proto, metadata_value_from_proto
from askmojo.common.v1 import common_pb2 as cpb
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer

Stub = pb_grpc.MetadataServiceStub
T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, "") or default)


EXAMPLES = _env_int("STATEFUL_EXAMPLES", 20)
STEPS = _env_int("STATEFUL_STEPS", 25)
TIMEOUT = 30.0

LIMITS: dict[str, Any] = {
    "max_batch_documents": 6,
    "delete_batch_documents": 2,
    "default_page_size": 3,
    "max_page_size": 5,
    "max_text_bytes": 2048,
    "max_document_id_bytes": 64,
    "max_metadata_keys": 4,
    "max_metadata_string_bytes": 32,
    # The least these limits allow (MetadataSettings checks it): pages of
    # large texts are cut by bytes before page_size.
    "max_message_bytes": 20 * 1024,
    "vector_service_address": "",
}
DEFAULT_MODEL, DEFAULT_DIMENSION = "all-MiniLM-L6-v2", 384

# --- what the rules draw -------------------------------------------------------

# Sorted differently by bytes and by a person: upper before lower case,
# digits as text ("10" < "9"), non-ASCII last.
COLLECTION_NAMES = ["alpha", "Beta", "gamma.2", "d_e-f"]
BAD_COLLECTION_NAMES = ["ab", "-abc", "a..b", "spaced name"]
DOC_IDS = ["a", "B", "b", "a-1", "a.1", "10", "9", "é", "日本", "z z", "~"]
BAD_DOC_IDS = ["", "tab\tid", "x" * 65]
TEXTS = [
    "alpha",
    "alpha ",  # another text: trailing whitespace counts
    "Beta gamma. Delta epsilon.",
    "é ü 日本語のテキスト",
    "line one\nline two",
    "word " * 300,
    "x" * 2000,
]
BAD_TEXTS = ["", "   \n", "a" * 2049, "nul\x00inside"]
KEYS = ["n", "s", "b", "m"]
# Within 2**53, where every backend compares ints and doubles exactly (past
# it PostgreSQL does not: test_catalog_regressions.py).
NUMBERS = st.one_of(
    st.integers(-3, 3), st.sampled_from([-1.5, 0.0, 1.0, 2.5, 3.0, 10**15, 1e15, 2**53])
)
STRINGS = st.sampled_from(["", "a", "A", "b", "10", "é"])
VALUES: st.SearchStrategy[MetadataScalar] = st.one_of(NUMBERS, STRINGS, st.booleans())
METADATA = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=3)
BAD_METADATA: list[tuple[dict[str, MetadataScalar], str]] = [
    ({"_reserved": 1}, "metadata['_reserved']"),
    ({"bad key": 1}, "metadata['bad key']"),
    ({"s": "y" * 33}, "metadata['s']"),
    ({"k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5}, "metadata"),
]
# (chunk_size, chunk_overlap) in characters, or None for the defaults.
CHUNKINGS = [None, (50, 10), (200, 0)]

RANGE_OPS = {"GT", "GTE", "LT", "LTE"}
LIST_OPS = {"IN", "NIN"}
OPERATORS = {
    "EQ": cpb.OPERATOR_EQ,
    "NE": cpb.OPERATOR_NE,
    "GT": cpb.OPERATOR_GT,
    "GTE": cpb.OPERATOR_GTE,
    "LT": cpb.OPERATOR_LT,
    "LTE": cpb.OPERATOR_LTE,
    "IN": cpb.OPERATOR_IN,
    "NIN": cpb.OPERATOR_NIN,
}

# A filter as a tuple tree: ("cond", key, op, values), ("all", children),
# ("any", children), ("not", child).
Node = tuple[Any, ...]


def _one(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return strategy.map(lambda value: (value,))


_FILTER_KEYS = st.sampled_from([*KEYS, "absent"])
_CONDITIONS: st.SearchStrategy[Node] = st.one_of(
    st.tuples(st.just("cond"), _FILTER_KEYS, st.sampled_from(["EQ", "NE"]), _one(VALUES)),
    st.tuples(
        st.just("cond"),
        _FILTER_KEYS,
        st.sampled_from(sorted(RANGE_OPS)),
        # Now and then a string or a bool: INVALID_ARGUMENT.
        _one(st.one_of(*[NUMBERS] * 8, STRINGS, st.booleans())),
    ),
    st.tuples(
        st.just("cond"),
        _FILTER_KEYS,
        st.sampled_from(sorted(LIST_OPS)),
        st.one_of(
            st.lists(NUMBERS, min_size=1, max_size=3),
            st.lists(STRINGS, min_size=1, max_size=3),
            st.lists(st.booleans(), min_size=1, max_size=2),
            st.lists(NUMBERS, min_size=1, max_size=3),
            st.lists(STRINGS, min_size=1, max_size=3),
            st.lists(VALUES, min_size=2, max_size=3),  # perhaps mixed: INVALID_ARGUMENT
        ).map(tuple),
    ),
)
FILTERS: st.SearchStrategy[Node] = st.recursive(
    _CONDITIONS,
    lambda inner: st.one_of(
        st.tuples(st.just("all"), st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("any"), st.lists(inner, min_size=1, max_size=3).map(tuple)),
        st.tuples(st.just("not"), inner),
    ),
    max_leaves=4,
)


def kind(value: MetadataScalar) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "string"


def _same(stored: MetadataScalar, operand: MetadataScalar) -> bool:
    """Numbers compare as numbers (1 == 1.0); a bool never equals a number."""
    return kind(stored) == kind(operand) and stored == operand


def matches(node: Node, metadata: dict[str, MetadataScalar]) -> bool:
    """The documented meaning (common.proto): NE and NIN match documents
    without the key, range comparisons only numbers, `not` negates."""
    tag = node[0]
    if tag == "all":
        return all(matches(child, metadata) for child in node[1])
    if tag == "any":
        return any(matches(child, metadata) for child in node[1])
    if tag == "not":
        return not matches(node[1], metadata)
    _, key, op, values = node
    if op in ("EQ", "NE", "IN", "NIN"):
        found = key in metadata and any(_same(metadata[key], v) for v in values)
        return found if op in ("EQ", "IN") else not found
    stored = metadata.get(key)
    if stored is None or kind(stored) != "number":
        return False
    operand = values[0]
    return {
        "GT": stored > operand,
        "GTE": stored >= operand,
        "LT": stored < operand,
        "LTE": stored <= operand,
    }[op]


def valid_filter(node: Node, negated: bool = False) -> bool:
    """Range operators take a number and must not be negated; IN/NIN values
    are all of one kind."""
    tag = node[0]
    if tag in ("all", "any"):
        return all(valid_filter(child, negated) for child in node[1])
    if tag == "not":
        return valid_filter(node[1], not negated)
    _, _, op, values = node
    kinds = {kind(v) for v in values}
    if op in RANGE_OPS:
        return kinds == {"number"} and not negated
    return len(kinds) == 1


def filter_proto(node: Node) -> cpb.Filter:
    tag = node[0]
    if tag in ("all", "any"):
        children = cpb.FilterList(filters=[filter_proto(child) for child in node[1]])
        return cpb.Filter(**{tag: children})
    if tag == "not":
        return cpb.Filter(**{"not": filter_proto(node[1])})
    _, key, op, values = node
    protos = list(metadata_to_proto({str(i): v for i, v in enumerate(values)}).values())
    if op in LIST_OPS:
        condition = cpb.Condition(key=key, op=OPERATORS[op], values=protos)
    else:
        condition = cpb.Condition(key=key, op=OPERATORS[op], value=protos[0])
    return cpb.Filter(condition=condition)


def typed(metadata: dict[str, MetadataScalar]) -> dict[str, tuple[str, MetadataScalar]]:
    """Metadata compared with its types: 1, 1.0 and true differ."""
    return {key: (type(value).__name__, value) for key, value in metadata.items()}


def metadata_of(document: pb.Document) -> dict[str, MetadataScalar]:
    values = {key: metadata_value_from_proto(value) for key, value in document.metadata.items()}
    assert all(v is not None for v in values.values())
    return values  # type: ignore[return-value]


# --- the model -------------------------------------------------------------------


@dataclass
class Doc:
    text: str
    metadata: dict[str, MetadataScalar]
    generation: int
    chunk_count: int


@dataclass
class Coll:
    vector_collection: str
    chunking: pb.ChunkingConfig
    model: str = DEFAULT_MODEL
    dimension: int = DEFAULT_DIMENSION
    docs: dict[str, Doc] = field(default_factory=dict)

    def chunks(self) -> int:
        return sum(doc.chunk_count for doc in self.docs.values())


@dataclass
class Planned:
    """What one document of a batch should come back as."""

    doc_id: str
    code: int
    field: str = ""  # the violated field, for INVALID_ARGUMENT
    state: int = pb.UPSERT_STATE_UNSPECIFIED
    generation: int = 0
    chunk_count: int | None = None  # None: learnt from the answer (new text)
    stored: Doc | None = None


# --- checking answers --------------------------------------------------------------


def violations(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return _fields(list(status.details)) if status is not None else []


def _fields(details: list[Any]) -> list[str]:
    fields = []
    for detail in details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


def check_message(message: str) -> None:
    """What every status message promises (DESIGN.md §3): short, and no
    stack trace or SQL on the wire."""
    assert message, "a status without a message"
    assert len(message.encode()) < 1024, message
    for leak in ("Traceback", "sqlalchemy", "SELECT ", "psycopg", "sqlite3"):
        assert leak not in message, message


def expect_error(
    call: Callable[[], object],
    code: grpc.StatusCode,
    *,
    words: tuple[str, ...] = (),
    field: str | None = None,
) -> str:
    """Runs `call`, which must fail with `code`; its message must hold every
    one of `words`, and an INVALID_ARGUMENT must name `field` (a prefix)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    details = error.details() or ""  # type: ignore[attr-defined]
    assert error.code() == code, (error.code(), details)  # type: ignore[attr-defined]
    check_message(details)
    for word in words:
        assert word in details, (word, details)
    if field is not None:
        fields = violations(error)
        assert fields and all(f.startswith(field) for f in fields), (field, fields, details)
    return details


def _reset(stub: Stub) -> None:
    """Deletes every collection, through the API."""
    names, token = [], ""
    while True:
        page = stub.ListCollections(
            pb.ListCollectionsRequest(page_size=5, page_token=token), timeout=TIMEOUT
        )
        names += [c.name for c in page.collections]
        token = page.next_page_token
        if not token:
            break
    for name in names:
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=TIMEOUT)


def effective_page_size(requested: int) -> int:
    return min(requested or LIMITS["default_page_size"], LIMITS["max_page_size"])


# --- the state machine ------------------------------------------------------------


class CatalogMachine(RuleBasedStateMachine):
    stub: ClassVar[Stub]
    # Each id's and name's place in the database's order (see `collation_order`).
    rank: ClassVar[dict[str, int]]

    def ordered(self, keys: Iterable[str]) -> list[str]:
        return sorted(keys, key=self.rank.__getitem__)

    def __init__(self) -> None:
        super().__init__()
        _reset(self.stub)
        self.collections: dict[str, Coll] = {}
        # Every vector collection handed out in this example: a re-created
        # collection never gets its predecessor's.
        self.vector_collections: set[str] = set()
        # Chunking is deterministic: the same text in the same collection
        # always makes as many chunks.
        self.chunk_counts: dict[tuple[str, str], int] = {}

    # --- drawing ---

    def _name(self, data: st.DataObject, *, bad: bool = True) -> str:
        """Mostly an existing collection; now and then another name of the
        pool (perhaps gone), or an invalid one."""
        existing = sorted(self.collections)
        choices: list[tuple[int, st.SearchStrategy[str]]] = [(2, st.sampled_from(COLLECTION_NAMES))]
        if existing:
            choices.insert(0, (8, st.sampled_from(existing)))
        if bad:
            choices.append((1, st.sampled_from(BAD_COLLECTION_NAMES)))
        return weighted(data, choices, "collection")

    def _doc_id(self, data: st.DataObject, coll: Coll | None, *, bad: bool = True) -> str:
        choices: list[tuple[int, st.SearchStrategy[str]]] = [(4, st.sampled_from(DOC_IDS))]
        if coll is not None and coll.docs:
            choices.insert(0, (4, st.sampled_from(sorted(coll.docs))))
        if bad:
            choices.append((1, st.sampled_from(BAD_DOC_IDS)))
        return weighted(data, choices, "id")

    def _missing(self, name: str, call: Callable[[], object], field: str) -> bool:
        """Checks the error of a call on a collection that is not there
        (bad name or unknown); True if so."""
        if name in BAD_COLLECTION_NAMES:
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field=field, words=(field,))
            return True
        if name not in self.collections:
            expect_error(call, grpc.StatusCode.NOT_FOUND, words=(repr(name), "not found"))
            return True
        return False

    @initialize(data=st.data())
    def start_with_documents(self, data: st.DataObject) -> None:
        """A collection or two holding a batch of documents, so that most
        steps have something to work on."""
        count = data.draw(st.integers(1, 2), label="collections")
        for name in data.draw(st.permutations(COLLECTION_NAMES), label="names")[:count]:
            created = self.stub.CreateCollection(
                pb.CreateCollectionRequest(name=name), timeout=TIMEOUT
            )
            self.vector_collections.add(created.vector_collection)
            self.collections[name] = Coll(created.vector_collection, created.chunking)
            batch = [
                (doc_id, data.draw(st.sampled_from(TEXTS)), data.draw(METADATA))
                for doc_id in data.draw(
                    st.lists(st.sampled_from(DOC_IDS), min_size=1, max_size=6, unique=True),
                    label="ids",
                )
            ]
            self._send_batches(name, [batch], stream=False)

    # --- collections ---

    @rule(data=st.data())
    def create_collection(self, data: st.DataObject) -> None:
        free = [n for n in COLLECTION_NAMES if n not in self.collections]
        choices: list[tuple[int, st.SearchStrategy[str]]] = [
            (2, st.sampled_from(COLLECTION_NAMES)),  # perhaps taken: ALREADY_EXISTS
            (1, st.sampled_from(BAD_COLLECTION_NAMES)),
        ]
        if free:
            choices.insert(0, (6, st.sampled_from(free)))
        name = weighted(data, choices, "collection")
        chunking = data.draw(st.sampled_from(CHUNKINGS), label="chunking")
        # The default model (named or not) and its dimension (given or not),
        # now and then a wrong one; or a model this service has no tokenizer
        # for, whose dimension must be given.
        model, dimension = weighted(
            data,
            [
                (6, st.just(("", 0))),
                (1, st.just((DEFAULT_MODEL, DEFAULT_DIMENSION))),
                (1, st.just(("", 100))),
                (1, st.just(("other-model", 8))),
                (1, st.just(("other-model", 0))),
            ],
            "model",
        )
        request = pb.CreateCollectionRequest(
            name=name, description=f"about {name}", model=model, dimension=dimension
        )
        if chunking is not None:
            request.chunking.chunk_size, request.chunking.chunk_overlap = chunking

        def call() -> pb.Collection:
            return self.stub.CreateCollection(request, timeout=TIMEOUT)

        if name in BAD_COLLECTION_NAMES:
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="name")
            return
        if model == "other-model" and not dimension:
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="dimension")
            return
        if dimension not in (0, DEFAULT_DIMENSION) and model != "other-model":
            words = (f"{DEFAULT_DIMENSION}-dimensional", str(dimension))
            expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, words=words)
            return
        if name in self.collections:
            expect_error(call, grpc.StatusCode.ALREADY_EXISTS, words=(repr(name), "already"))
            return
        created = call()
        assert (created.name, created.description) == (name, f"about {name}")
        model, dimension = model or DEFAULT_MODEL, dimension or DEFAULT_DIMENSION
        assert (created.model, created.dimension) == (model, dimension)
        assert (created.document_count, created.chunk_count) == (0, 0)
        if chunking is None and model != DEFAULT_MODEL:  # no tokenizer: characters
            assert created.chunking == pb.ChunkingConfig(
                chunk_size=400, chunk_overlap=50, unit=pb.CHUNK_UNIT_CHARACTERS
            )
        elif chunking is None:
            assert created.chunking.unit == pb.CHUNK_UNIT_TOKENS
        else:
            size, overlap = chunking
            assert created.chunking.unit == pb.CHUNK_UNIT_CHARACTERS
            assert created.chunking.chunk_size == size
            assert created.chunking.chunk_overlap == (overlap or min(50, size // 4))
        vector = created.vector_collection
        assert vector.startswith(f"{name}-") and vector not in self.vector_collections, vector
        self.vector_collections.add(vector)
        self.collections[name] = Coll(vector, created.chunking, model, dimension)
        self._check_collection(name)

    @rule(data=st.data())
    def get_collection(self, data: st.DataObject) -> None:
        name = self._name(data)
        request = pb.GetCollectionRequest(name=name)
        if self._missing(name, lambda: self.stub.GetCollection(request, timeout=TIMEOUT), "name"):
            return
        self._check_collection(name)

    def _check_collection(self, name: str) -> None:
        got = self.stub.GetCollection(pb.GetCollectionRequest(name=name), timeout=TIMEOUT)
        coll = self.collections[name]
        assert got.name == name
        assert (got.model, got.dimension) == (coll.model, coll.dimension)
        assert got.vector_collection == coll.vector_collection
        assert got.chunking == coll.chunking
        assert (got.document_count, got.chunk_count) == (len(coll.docs), coll.chunks())

    @rule(data=st.data())
    def delete_collection(self, data: st.DataObject) -> None:
        name = self._name(data)
        request = pb.DeleteCollectionRequest(name=name)

        def call() -> pb.DeleteCollectionResponse:
            return self.stub.DeleteCollection(request, timeout=TIMEOUT)

        if self._missing(name, call, "name"):
            return
        coll = self.collections.pop(name)
        deleted = call()
        assert (deleted.deleted_documents, deleted.deleted_chunks) == (
            len(coll.docs),
            coll.chunks(),
        )
        expect_error(
            lambda: self.stub.GetCollection(pb.GetCollectionRequest(name=name), timeout=TIMEOUT),
            grpc.StatusCode.NOT_FOUND,
        )

    @precondition(lambda self: bool(self.collections))
    @rule(data=st.data())
    def recreate_collection(self, data: st.DataObject) -> None:
        """Deleted and created again under the same name: empty, and none of
        the old documents comes back, even when upserted again unchanged."""
        name = data.draw(st.sampled_from(sorted(self.collections)), label="collection")
        old = self.collections.pop(name)
        self.stub.DeleteCollection(pb.DeleteCollectionRequest(name=name), timeout=TIMEOUT)
        created = self.stub.CreateCollection(
            pb.CreateCollectionRequest(
                name=name, chunking=old.chunking, model=old.model, dimension=old.dimension
            ),
            timeout=TIMEOUT,
        )
        assert (created.document_count, created.chunk_count) == (0, 0)
        assert created.vector_collection not in self.vector_collections
        self.vector_collections.add(created.vector_collection)
        self.collections[name] = Coll(
            created.vector_collection, created.chunking, old.model, old.dimension
        )
        self._check_collection(name)
        listed = self.stub.ListDocuments(pb.ListDocumentsRequest(collection=name), timeout=TIMEOUT)
        assert list(listed.documents) == [] and listed.next_page_token == ""
        for doc_id in sorted(old.docs)[:3]:
            expect_error(
                lambda doc_id=doc_id: self.stub.GetDocument(
                    pb.GetDocumentRequest(collection=name, id=doc_id), timeout=TIMEOUT
                ),
                grpc.StatusCode.NOT_FOUND,
                words=(repr(doc_id),),
            )
        if old.docs:  # an old document sent again, as it was: new, not UNCHANGED
            doc_id, doc = sorted(old.docs.items())[0]
            self._send_batches(name, [[(doc_id, doc.text, doc.metadata)]], stream=False)
            assert self.collections[name].docs[doc_id].generation == 1

    @rule(data=st.data())
    def list_collections(self, data: st.DataObject) -> None:
        page_size = data.draw(st.integers(-1, 6), label="page_size")
        if page_size < 0:
            expect_error(
                lambda: self.stub.ListCollections(
                    pb.ListCollectionsRequest(page_size=page_size), timeout=TIMEOUT
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                field="page_size",
            )
            return
        seen: list[pb.Collection] = []
        token = ""
        for _ in range(len(self.collections) + 2):
            page = self.stub.ListCollections(
                pb.ListCollectionsRequest(page_size=page_size, page_token=token), timeout=TIMEOUT
            )
            assert len(page.collections) <= effective_page_size(page_size)
            assert page.collections or not page.next_page_token, "an empty page before the end"
            seen += page.collections
            token = page.next_page_token
            if not token:
                break
        else:
            raise AssertionError("ListCollections never ended")
        names = [c.name for c in seen]
        want = self.ordered(self.collections)
        assert names == want, (names, want)
        for listed in seen:
            coll = self.collections[listed.name]
            assert (listed.document_count, listed.chunk_count) == (len(coll.docs), coll.chunks())
            assert listed.vector_collection == coll.vector_collection

    # --- documents ---

    def _draw_document(
        self, data: st.DataObject, coll: Coll | None
    ) -> tuple[str, str, dict[str, MetadataScalar]]:
        doc_id = self._doc_id(data, coll)
        old = coll.docs.get(doc_id) if coll is not None else None
        change = weighted(
            data,
            [
                (3, st.just("fresh")),
                (2, st.just("same")),
                (2, st.just("text")),
                (2, st.just("metadata")),
                (1, st.just("invalid")),
            ],
            "change",
        )
        if change == "invalid":
            if data.draw(st.booleans(), label="bad text"):
                return doc_id, data.draw(st.sampled_from(BAD_TEXTS)), {}
            bad, _ = data.draw(st.sampled_from(BAD_METADATA), label="bad metadata")
            return doc_id, "fine text", bad
        if old is None or change == "fresh":
            return doc_id, data.draw(st.sampled_from(TEXTS)), data.draw(METADATA)
        if change == "same":
            return doc_id, old.text, dict(old.metadata)
        if change == "text":
            text = data.draw(st.sampled_from([t for t in TEXTS if t != old.text]), label="text")
            return doc_id, text, dict(old.metadata)
        return doc_id, old.text, data.draw(METADATA, label="metadata")

    def _plan(
        self, coll: Coll, batch: list[tuple[str, str, dict[str, MetadataScalar]]]
    ) -> list[Planned]:
        """The expected result of each document of a batch, in order."""
        planned: list[Planned] = []
        first: dict[str, int] = {}
        for index, (doc_id, text, metadata) in enumerate(batch):
            where = f"documents[{index}]"
            problem = _problem(doc_id, text, metadata)
            if doc_id in first:
                problem = "id"
            if problem:
                planned.append(Planned(doc_id, code_pb2.INVALID_ARGUMENT, f"{where}.{problem}"))
                continue
            first[doc_id] = index
            old = coll.docs.get(doc_id)
            if old is not None and old.text == text and typed(old.metadata) == typed(metadata):
                planned.append(
                    Planned(
                        doc_id,
                        code_pb2.OK,
                        state=pb.UPSERT_STATE_UNCHANGED,
                        generation=old.generation,
                        chunk_count=old.chunk_count,
                        stored=old,
                    )
                )
                continue
            generation = 1 if old is None else old.generation + 1
            chunks = old.chunk_count if old is not None and old.text == text else None
            planned.append(
                Planned(
                    doc_id,
                    code_pb2.OK,
                    state=pb.UPSERT_STATE_PENDING,
                    generation=generation,
                    chunk_count=chunks,
                    stored=Doc(text, dict(metadata), generation, chunks or 0),
                )
            )
        return planned

    def _check_results(
        self, name: str, planned: list[Planned], results: list[pb.UpsertResult]
    ) -> None:
        coll = self.collections[name]
        assert [r.id for r in results] == [p.doc_id for p in planned]
        for want, got in zip(planned, results, strict=True):
            assert got.status.code == want.code, (want, got)
            if want.code != code_pb2.OK:
                assert got.state == pb.UPSERT_STATE_FAILED, got
                check_message(got.status.message)
                fields = _fields(list(got.status.details))
                assert fields and all(f.startswith(want.field) for f in fields), (want, fields)
                continue
            assert (got.state, got.generation) == (want.state, want.generation), (want, got)
            assert got.chunk_count >= 1
            if want.chunk_count is not None:
                assert got.chunk_count == want.chunk_count, (want, got)
            assert want.stored is not None
            text = want.stored.text
            known = self.chunk_counts.setdefault((coll.vector_collection, text), got.chunk_count)
            assert got.chunk_count == known, "the same text chunked differently"
            want.stored.chunk_count = got.chunk_count
            coll.docs[want.doc_id] = want.stored

    def _send_batches(
        self,
        name: str,
        batches: list[list[tuple[str, str, dict[str, MetadataScalar]]]],
        *,
        stream: bool,
    ) -> None:
        """Sends the batches (one UpsertDocuments each, or one
        IngestDocuments stream) and checks every result."""

        def request(batch: list[tuple[str, str, dict[str, MetadataScalar]]]) -> Any:
            documents = [
                pb.Document(id=doc_id, text=text, metadata=metadata_to_proto(metadata))
                for doc_id, text, metadata in batch
            ]
            kind = pb.IngestDocumentsRequest if stream else pb.UpsertDocumentsRequest
            return kind(collection=name, documents=documents)

        if stream:
            responses = list(
                self.stub.IngestDocuments(iter([request(b) for b in batches]), timeout=TIMEOUT)
            )
            assert len(responses) == len(batches)
            for batch, response in zip(batches, responses, strict=True):
                self._check_stream_response(name, batch, response)
            return
        for batch in batches:
            refused = _batch_error(batch)
            call = lambda batch=batch: self.stub.UpsertDocuments(request(batch), timeout=TIMEOUT)  # noqa: E731
            if refused is not None:
                expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="documents")
                continue
            if self._missing(name, call, "collection"):
                continue
            planned = self._plan(self.collections[name], batch)
            self._check_results(name, planned, list(call().results))

    def _check_stream_response(
        self,
        name: str,
        batch: list[tuple[str, str, dict[str, MetadataScalar]]],
        response: pb.IngestDocumentsResponse,
    ) -> None:
        refused = _batch_error(batch)
        if refused is None and name in BAD_COLLECTION_NAMES:
            refused = code_pb2.INVALID_ARGUMENT
        elif refused is None and name not in self.collections:
            refused = code_pb2.NOT_FOUND
        if refused is not None:
            # A refused batch stores nothing; its status says why. (The
            # service also fails each of its documents with that status.)
            assert response.status.code == refused, response.status
            check_message(response.status.message)
            for result in response.results:
                assert result.state == pb.UPSERT_STATE_FAILED
                assert result.status.code == refused
            return
        assert response.status.code == code_pb2.OK, response.status
        planned = self._plan(self.collections[name], batch)
        self._check_results(name, planned, list(response.results))

    # Rules are picked alike: writes go by three names, so that collections
    # fill up faster than they are deleted.
    @rule(data=st.data())
    def upsert_documents(self, data: st.DataObject) -> None:
        self._upsert(data)

    @rule(data=st.data())
    def upsert_more_documents(self, data: st.DataObject) -> None:
        self._upsert(data)

    @rule(data=st.data())
    def upsert_even_more_documents(self, data: st.DataObject) -> None:
        self._upsert(data)

    def _upsert(self, data: st.DataObject) -> None:
        name = self._name(data)
        stream = data.draw(st.booleans(), label="stream")
        batches = []
        # A stream carries two batches now and then, the second seeing the first.
        for _ in range(data.draw(st.integers(1, 2), label="batches") if stream else 1):
            coll = self.collections.get(name)
            size = data.draw(st.integers(1, 6), label="size")
            if data.draw(st.integers(0, 19), label="bad size?") == 0:
                size = data.draw(st.sampled_from([0, 7]), label="bad size")
            batch = [self._draw_document(data, coll) for _ in range(size)]
            batches.append(batch)
        self._send_batches(name, batches, stream=stream)

    @rule(data=st.data())
    def get_document(self, data: st.DataObject) -> None:
        name = self._name(data)
        coll = self.collections.get(name)
        doc_id = self._doc_id(data, coll)
        view = data.draw(
            st.sampled_from(
                [pb.DOCUMENT_VIEW_UNSPECIFIED, pb.DOCUMENT_VIEW_BASIC, pb.DOCUMENT_VIEW_FULL]
            )
        )
        request = pb.GetDocumentRequest(collection=name, id=doc_id, view=view)

        def call() -> pb.Document:
            return self.stub.GetDocument(request, timeout=TIMEOUT)

        if doc_id in BAD_DOC_IDS:
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="id")
            return
        if self._missing(name, call, "collection"):
            return
        assert coll is not None
        if doc_id not in coll.docs:
            expect_error(call, grpc.StatusCode.NOT_FOUND, words=(repr(doc_id), repr(name)))
            return
        self._check_document(coll.docs[doc_id], call(), text=view != pb.DOCUMENT_VIEW_BASIC)

    def _check_document(self, want: Doc, got: pb.Document, *, text: bool) -> None:
        assert got.text == (want.text if text else ""), got.id
        assert typed(metadata_of(got)) == typed(want.metadata), got.id
        assert (got.generation, got.chunk_count) == (want.generation, want.chunk_count), got.id
        assert got.content_hash == hashlib.sha256(want.text.encode()).hexdigest()
        assert got.state == pb.DOCUMENT_STATE_PENDING  # no vector service
        assert got.error == ""
        assert got.create_time.ToDatetime() <= got.update_time.ToDatetime()

    @rule(data=st.data())
    def delete_documents_by_ids(self, data: st.DataObject) -> None:
        name = self._name(data)
        coll = self.collections.get(name)
        # Now and then more ids than MAX_BATCH_DOCUMENTS: refused.
        count = weighted(data, [(9, st.integers(1, 4)), (1, st.just(7))], "ids")
        ids = [self._doc_id(data, coll, bad=count == 1) for _ in range(count)]
        request = pb.DeleteDocumentsRequest(collection=name, ids=ids)
        target = weighted(
            data, [(8, st.just("ids")), (1, st.just("both")), (1, st.just("neither"))], "target"
        )
        if target == "both":
            request.filter.CopyFrom(filter_proto(("cond", "n", "EQ", (1,))))
        elif target == "neither":
            del request.ids[:]

        def call() -> pb.DeleteDocumentsResponse:
            return self.stub.DeleteDocuments(request, timeout=TIMEOUT)

        if target != "ids" or count > LIMITS["max_batch_documents"]:
            # Exactly one of ids and filter; at most MAX_BATCH_DOCUMENTS ids.
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="ids")
            return
        bad = [i for i, doc_id in enumerate(ids) if doc_id in BAD_DOC_IDS]
        if bad:
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field=f"ids[{bad[0]}]")
            return
        if self._missing(name, call, "collection"):
            return
        assert coll is not None
        unique = list(dict.fromkeys(ids))
        gone = [doc_id for doc_id in unique if doc_id in coll.docs]
        deleted = call()
        assert deleted.deleted_count == len(gone), (ids, deleted)
        assert list(deleted.not_found_ids) == [i for i in unique if i not in coll.docs]
        for doc_id in gone:
            del coll.docs[doc_id]

    @rule(data=st.data())
    def delete_documents_by_filter(self, data: st.DataObject) -> None:
        name = self._name(data)
        where = data.draw(FILTERS, label="filter")
        request = pb.DeleteDocumentsRequest(collection=name, filter=filter_proto(where))

        def call() -> pb.DeleteDocumentsResponse:
            return self.stub.DeleteDocuments(request, timeout=TIMEOUT)

        if not valid_filter(where):
            expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field="filter")
            return
        if self._missing(name, call, "collection"):
            return
        coll = self.collections[name]
        gone = sorted(i for i, doc in coll.docs.items() if matches(where, doc.metadata))
        deleted = call()
        assert deleted.deleted_count == len(gone), (where, gone, deleted)
        assert list(deleted.not_found_ids) == []
        for doc_id in gone:
            del coll.docs[doc_id]
        self._check_collection(name)

    # --- listing ---

    def _walk(
        self,
        data: st.DataObject,
        request: pb.ListDocumentsRequest,
        pages: int,
        between: Callable[[], None] | None = None,
    ) -> list[pb.Document]:
        """Every page of a listing; `between` runs after the first page. A
        token is bound to the collection, filter and states, not to the page
        size: now and then the next page asks for another size."""
        seen: list[pb.Document] = []
        for number in range(pages + 2):
            if number and data.draw(st.integers(0, 3), label="resize?") == 0:
                request.page_size = data.draw(st.integers(0, 6), label="next page_size")
            page = self.stub.ListDocuments(request, timeout=TIMEOUT)
            assert len(page.documents) <= effective_page_size(request.page_size)
            assert page.documents or not page.next_page_token, "an empty page before the end"
            seen += page.documents
            if not page.next_page_token:
                return seen
            request.page_token = page.next_page_token
            if number == 0 and between is not None:
                between()
        raise AssertionError(f"ListDocuments went on past {pages + 2} pages")

    @rule(data=st.data())
    def list_documents(self, data: st.DataObject) -> None:
        name = self._name(data)
        where = data.draw(st.none() | FILTERS, label="filter")
        states = data.draw(
            st.sampled_from(
                [
                    [],
                    [pb.DOCUMENT_STATE_PENDING],
                    [pb.DOCUMENT_STATE_INDEXED],
                    [pb.DOCUMENT_STATE_FAILED, pb.DOCUMENT_STATE_PENDING],
                    [pb.DOCUMENT_STATE_UNSPECIFIED],
                ]
            ),
            label="states",
        )
        view = data.draw(
            st.sampled_from(
                [pb.DOCUMENT_VIEW_UNSPECIFIED, pb.DOCUMENT_VIEW_BASIC, pb.DOCUMENT_VIEW_FULL]
            ),
            label="view",
        )
        page_size = data.draw(st.integers(-1, 6), label="page_size")
        request = pb.ListDocumentsRequest(
            collection=name, states=states, view=view, page_size=page_size
        )
        if where is not None:
            request.filter.CopyFrom(filter_proto(where))
        if where is not None and not valid_filter(where):
            expect_error(
                lambda: self.stub.ListDocuments(request, timeout=TIMEOUT),
                grpc.StatusCode.INVALID_ARGUMENT,
                field="filter",
            )
            return
        if pb.DOCUMENT_STATE_UNSPECIFIED in states:
            expect_error(
                lambda: self.stub.ListDocuments(request, timeout=TIMEOUT),
                grpc.StatusCode.INVALID_ARGUMENT,
                field="states[0]",
            )
            return
        if page_size < 0:
            expect_error(
                lambda: self.stub.ListDocuments(request, timeout=TIMEOUT),
                grpc.StatusCode.INVALID_ARGUMENT,
                field="page_size",
            )
            return
        if self._missing(
            name, lambda: self.stub.ListDocuments(request, timeout=TIMEOUT), "collection"
        ):
            return
        coll = self.collections[name]
        pending = not states or pb.DOCUMENT_STATE_PENDING in states
        want = self.ordered(
            doc_id
            for doc_id, doc in coll.docs.items()
            if pending and (where is None or matches(where, doc.metadata))
        )
        seen = self._walk(data, request, len(coll.docs))
        assert [d.id for d in seen] == want, (where, states, [d.id for d in seen], want)
        for got in seen:
            self._check_document(coll.docs[got.id], got, text=view == pb.DOCUMENT_VIEW_FULL)

    @precondition(lambda self: any(len(c.docs) >= 2 for c in self.collections.values()))
    @rule(data=st.data())
    def list_while_writing(self, data: st.DataObject) -> None:
        """The cursor stays valid while others write: after the first page,
        documents are added and deleted; every document there before and
        after comes exactly once, in id order, and nothing else comes."""
        names = sorted(n for n, c in self.collections.items() if len(c.docs) >= 2)
        name = data.draw(st.sampled_from(names), label="collection")
        coll = self.collections[name]
        before = set(coll.docs)
        added = data.draw(st.lists(st.sampled_from(DOC_IDS), max_size=3, unique=True))
        removed = data.draw(st.lists(st.sampled_from(sorted(before)), max_size=2, unique=True))

        def write() -> None:
            batch = [(doc_id, "written meanwhile", {}) for doc_id in added]
            if batch:
                self._send_batches(name, [batch], stream=False)
            if removed:
                self.stub.DeleteDocuments(
                    pb.DeleteDocumentsRequest(collection=name, ids=removed), timeout=TIMEOUT
                )
                for doc_id in removed:
                    coll.docs.pop(doc_id, None)

        request = pb.ListDocumentsRequest(collection=name, page_size=data.draw(st.integers(1, 3)))
        seen = [d.id for d in self._walk(data, request, len(before) + len(added), write)]
        after = set(coll.docs)
        assert seen == self.ordered(set(seen)), seen  # in order, each once
        assert before & after <= set(seen), (before & after) - set(seen)
        assert set(seen) <= before | after, set(seen) - (before | after)

    @precondition(lambda self: any(len(c.docs) >= 2 for c in self.collections.values()))
    @rule(data=st.data())
    def replay_page_token(self, data: st.DataObject) -> None:
        """A token is bound to its collection, filter and states: replayed on
        another query it is refused, never a wrong page."""
        names = sorted(n for n, c in self.collections.items() if len(c.docs) >= 2)
        name = data.draw(st.sampled_from(names), label="collection")
        first = self.stub.ListDocuments(
            pb.ListDocumentsRequest(collection=name, page_size=1), timeout=TIMEOUT
        )
        assert first.next_page_token
        other = pb.ListDocumentsRequest(collection=name, page_token=first.next_page_token)
        change = data.draw(st.sampled_from(["filter", "states", "collection", "garbage"]))
        if change == "filter":
            other.filter.CopyFrom(filter_proto(("cond", "n", "NE", (0,))))
        elif change == "states":
            other.states.append(pb.DOCUMENT_STATE_PENDING)
        elif change == "collection":
            others = [n for n in self.collections if n != name]
            if not others:
                return
            other.collection = others[0]
        else:
            other.page_token = data.draw(
                st.sampled_from(["not-a-token", first.next_page_token[:-4], "AAAA"])
            )
        expect_error(
            lambda: self.stub.ListDocuments(other, timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT,
            field="page_token",
        )

    # --- stats ---

    @rule(data=st.data())
    def get_stats(self, data: st.DataObject) -> None:
        name = data.draw(st.just("") | st.sampled_from(COLLECTION_NAMES), label="collection")
        request = pb.GetStatsRequest(collection=name)
        if name and self._missing(
            name, lambda: self.stub.GetStats(request, timeout=TIMEOUT), "collection"
        ):
            return
        self._check_stats(name)

    @invariant()
    def totals_agree(self) -> None:
        """After every step: documents and chunks of every collection
        together, as GetStats counts them (one cheap call)."""
        self._check_stats("")

    def _check_stats(self, name: str) -> None:
        stats = self.stub.GetStats(pb.GetStatsRequest(collection=name), timeout=TIMEOUT)
        colls = [self.collections[name]] if name else list(self.collections.values())
        by_state = {s.state: s.count for s in stats.documents_by_state}
        assert by_state == {
            pb.DOCUMENT_STATE_PENDING: sum(len(c.docs) for c in colls),
            pb.DOCUMENT_STATE_INDEXED: 0,
            pb.DOCUMENT_STATE_FAILED: 0,
        }, by_state
        assert stats.chunk_count == sum(c.chunks() for c in colls)
        assert stats.truncated_chunk_count == 0  # nothing embedded


def weighted(data: st.DataObject, choices: list[tuple[int, st.SearchStrategy[T]]], label: str) -> T:
    """A draw from one of `choices`, picked in proportion to its weight
    (shrinking towards the first)."""
    pick = data.draw(st.integers(0, sum(w for w, _ in choices) - 1), label=f"{label} kind")
    for weight, strategy in choices:
        if pick < weight:
            return data.draw(strategy, label=label)
        pick -= weight
    raise AssertionError("unreachable")


def _problem(doc_id: str, text: str, metadata: dict[str, MetadataScalar]) -> str:
    """The field an invalid document is refused for ("" when valid), in the
    order the service checks them."""
    if doc_id in BAD_DOC_IDS:
        return "id"
    if text in BAD_TEXTS:
        return "text"
    if any(metadata == bad for bad, _ in BAD_METADATA):
        return next(path for bad, path in BAD_METADATA if metadata == bad)
    return ""


def _batch_error(batch: list[Any]) -> int | None:
    """A batch refused as a whole: empty or over MAX_BATCH_DOCUMENTS."""
    if not batch or len(batch) > LIMITS["max_batch_documents"]:
        return code_pb2.INVALID_ARGUMENT
    return None


# --- running it on each backend -------------------------------------------------


def collation_order(settings: MetadataSettings) -> dict[str, int]:
    """Every id and name the machine stores, ranked as the database sorts
    them. "Ordered by id" (and by name) is the database's text order: bytes
    on SQLite and on a PostgreSQL database of collation C (as here), but
    linguistic under an ICU or glibc locale ("a" < "B" < "b"), where paging
    must hold all the same."""
    keys = sorted(set(DOC_IDS + COLLECTION_NAMES))
    if not settings.database_url.startswith("postgresql"):
        return {key: rank for rank, key in enumerate(keys)}
    engine = sqlalchemy.create_engine(settings.database_url)
    with engine.connect() as connection:
        query = "SELECT k FROM unnest(CAST(:keys AS text[])) AS t(k) ORDER BY k"
        ranked = connection.execute(sqlalchemy.text(query), {"keys": keys}).scalars().all()
    engine.dispose()
    return {key: rank for rank, key in enumerate(ranked)}


@pytest.fixture
def catalog_stub(backend_settings: MetadataSettings) -> Iterator[tuple[Stub, dict[str, int]]]:
    settings = backend_settings.model_copy(update=LIMITS)
    if settings.database_url.startswith("postgresql"):
        # Every step commits; waiting for the WAL flush of each would be
        # most of this test's time. (The database is dropped afterwards.)
        engine = sqlalchemy.create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            name = connection.execute(sqlalchemy.text("SELECT current_database()")).scalar_one()
            alter = f'ALTER DATABASE "{name}" SET synchronous_commit = off'
            connection.execute(sqlalchemy.text(alter))
        engine.dispose()
    prepare_database(settings)
    with (
        RunningServer.metadata(settings) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Stub(channel), collation_order(settings)


# pytest-timeout's 300 s fits the defaults many times over; longer runs
# (STATEFUL_EXAMPLES/STEPS) get time in proportion.
@pytest.mark.timeout(max(300, EXAMPLES * STEPS // 2))
def test_catalog_against_model(catalog_stub: tuple[Stub, dict[str, int]]) -> None:
    class Machine(CatalogMachine):
        stub, rank = catalog_stub

    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=os.environ.get("STATEFUL_RANDOM") != "1",
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
            ],
        ),
    )
