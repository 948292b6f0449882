"""Known-item search evaluation (issue #4), shared by
`scripts/eval_known_item.py` and `tests/pipeline/test_known_item.py`.

The corpus is text nobody on the team wrote: the documentation of the Python
standard library modules shipped with this interpreter (each module's
docstring, then its public functions', classes' and methods' docstrings).
From each document one prose sentence, found nowhere else in the corpus, is
the query; a hit is that document among the first five distinct documents
returned. The same queries are answered by exact brute-force cosine search
over the very chunk vectors the vector service stores, so "the service never
does worse than exact search" can be checked query by query.

Everything is deterministic: the module list is sorted (and, when fewer are
asked for, a seeded sample), members are sorted by name, the sentence of each
document is a seeded choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import pkgutil
import random
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from askmojo.common.filters import metadata_to_proto
from askmojo.common.v1 import common_pb2
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from metadata_service.domain import ChunkingSpec, ChunkUnit
from metadata_service.tokenizer import PACKAGED_MODEL
from metadata_service.validation import chunk as chunk_document

T_ = TypeVar("T_")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Imported for their effects (a browser, a printed poem), GUI toolkits, the
# test suite, the IDE, data-only packages, code that writes grammar caches
# next to itself (lib2to3), and readline, which may write terminal escapes.
SKIP_PACKAGES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "pydoc_data",
        "lib2to3",
        "ensurepip",
        "readline",
        "rlcompleter",
    }
)
MIN_CHARS = 400
MAX_CHARS = 6000
SEED = 4
TOP_DOCS = 5
# Exact cosine scores this close are a tie: either document is as good.
TIE_EPSILON = 1e-6

_SENTENCE_END = re.compile(r"""[.!?]["')\]]*(?=\s+["'(]?[A-Z])""")
_PROSE_WORD = re.compile(r"""^["'(]*[A-Za-z][A-Za-z'-]*["')]*[.,;:!?]?["')]*$""")
_CODE_MARKS = re.compile(r">>>|\.\.\.|::|->|==|[=<>{}\[\]|\\@$#`*_]|\w\(|^\W")
MIN_WORDS = 8
MAX_WORDS = 40


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict[str, str | int]


@dataclasses.dataclass(frozen=True)
class KnownItem:
    document_id: str
    query: str


# --- the corpus ----------------------------------------------------------------


def stdlib_module_names() -> list[str]:
    """Public stdlib modules and their public submodules (one level down),
    sorted; only those importable here."""
    names: set[str] = set()
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP_PACKAGES:
            continue
        module = _import(top)
        if module is None:
            continue
        names.add(top)
        for info in pkgutil.iter_modules(getattr(module, "__path__", None) or []):
            if not info.name.startswith("_"):
                full = f"{top}.{info.name}"
                if _import(full) is not None:
                    names.add(full)
    return sorted(names)


def _import(name: str) -> object | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # not on this platform (msvcrt, winreg, ...)
        return None


def module_text(name: str) -> str:
    """The module's docstring, then every public member's docstring under its
    name (methods as Class.method), members in name order."""
    module = importlib.import_module(name)
    parts = [name, _doc(module)]
    public = getattr(module, "__all__", None)
    members = sorted(
        {str(n) for n in public}
        if isinstance(public, list | tuple)
        else {n for n in vars(module) if not n.startswith("_")}
    )
    for member in members:
        obj = getattr(module, member, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        # Without __all__, only what the module defines (not its imports).
        if public is None and getattr(obj, "__module__", None) != name:
            continue
        doc = _doc(obj)
        if doc:
            parts += ["", member, doc]
        if inspect.isclass(obj):
            for attr, value in sorted(vars(obj).items()):
                if attr.startswith("_") or not callable(value):
                    continue
                doc = _doc(value)
                if doc:
                    parts += ["", f"{member}.{attr}", doc]
    return "\n".join(p for p in parts if p is not None).strip() + "\n"


def _doc(obj: object) -> str:
    # The object's own docstring only: inspect.getdoc would repeat a base
    # class's text under every subclass.
    doc = getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    return "\n".join(line.rstrip() for line in inspect.cleandoc(doc).splitlines()).strip()


def cap(text: str, limit: int) -> str:
    """At most `limit` characters, cut at the last paragraph (else line) end."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n\n")
    if cut < limit // 2:
        cut = head.rfind("\n")
    return head[: cut if cut > 0 else limit].rstrip() + "\n"


def build_documents(max_chars: int = MAX_CHARS, min_chars: int = MIN_CHARS) -> list[Document]:
    """Every eligible stdlib module as a document (sorted by id). Run in a
    throwaway interpreter by `corpus()`: importing ~300 modules here would
    leave their import-time state in the caller."""
    documents = []
    for name in stdlib_module_names():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = cap(module_text(name), max_chars)
        except Exception:
            continue
        if len(text) < min_chars:
            continue
        documents.append(
            Document(name, text, {"package": name.partition(".")[0], "chars": len(text)})
        )
    return documents


# --- the known items -------------------------------------------------------------


def sentences(text: str) -> Iterator[str]:
    """Prose sentences of `text`, exactly as they appear in it (line breaks
    included). Paragraphs with indented lines (code, tables, option lists)
    give none."""
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.split("\n")
        if any(line[:1].isspace() for line in lines):
            continue
        # A first line without a space is a member's name heading its docstring.
        start = 0 if " " in lines[0] else len(lines[0])
        ends = [m.end() for m in _SENTENCE_END.finditer(paragraph)] + [len(paragraph)]
        for end in ends:
            sentence = paragraph[start:end].strip()
            start = end
            if _is_prose(sentence):
                yield sentence


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not sentence[0].isupper() or not sentence.endswith("."):
        return False
    if _CODE_MARKS.search(sentence):
        return False
    # Identifiers, numbers and dotted names are not prose.
    prose = sum(1 for w in words if _PROSE_WORD.match(w))
    return prose >= 0.9 * len(words)


def known_items(documents: Sequence[Document], seed: int = SEED) -> list[KnownItem]:
    """One query per document: a prose sentence chosen with `seed` among
    those found in no other document (so exactly one document is "known").
    Documents without such a sentence get none."""
    rng = random.Random(seed)
    squeezed = {d.id: " ".join(d.text.split()) for d in documents}
    items = []
    for document in documents:
        candidates = sorted(set(sentences(document.text)))
        rng.shuffle(candidates)
        for sentence in candidates:
            needle = " ".join(sentence.split())
            if not any(needle in text for i, text in squeezed.items() if i != document.id):
                assert sentence in document.text
                items.append(KnownItem(document.id, sentence))
                break
    return items


def corpus(
    modules: int | None = None,
    max_chars: int = MAX_CHARS,
    min_chars: int = MIN_CHARS,
    seed: int = SEED,
) -> tuple[list[Document], list[KnownItem]]:
    """The documents that have a known item (all of them, or a seeded sample of
    `modules`, sorted by id) and their items, built in a child interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "corpus.json"
        subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "evals.known_item",
                "--max-chars",
                str(max_chars),
                "--min-chars",
                str(min_chars),
                str(out),
            ],
            cwd=REPO_ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        raw = json.loads(out.read_text())
    documents = [Document(d["id"], d["text"], d["metadata"]) for d in raw]
    items = {i.document_id: i for i in known_items(documents, seed)}
    documents = [d for d in documents if d.id in items]
    if modules is not None and modules < len(documents):
        documents = sorted(random.Random(seed).sample(documents, modules), key=lambda d: d.id)
    return documents, [items[d.id] for d in documents]


# --- measuring -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QueryOutcome:
    item: KnownItem
    service_docs: list[str]  # first TOP_DOCS distinct documents, best first
    exact_docs: list[str]
    # Exact cosine of the query with each document's best chunk.
    exact_best: dict[str, float]
    # The service's first documents when the Search carries EVERYTHING, a
    # filter every document matches (None: not measured).
    filtered_docs: list[str] | None = None
    # The service's first documents in KEYWORD and HYBRID mode (issue #14;
    # service_docs are DENSE).
    keyword_docs: list[str] | None = None
    hybrid_docs: list[str] | None = None

    @property
    def exact_full_rank(self) -> int:
        """The known item's place among all documents by exact cosine."""
        own = self.exact_best[self.item.document_id]
        return 1 + sum(1 for score in self.exact_best.values() if score > own)

    @property
    def service_rank(self) -> int | None:
        return _rank(self.service_docs, self.item.document_id)

    @property
    def exact_rank(self) -> int | None:
        return _rank(self.exact_docs, self.item.document_id)

    @property
    def filtered_rank(self) -> int | None:
        return _rank(self.filtered_docs or [], self.item.document_id)

    @property
    def lost(self) -> bool:
        return self.loses(self.service_docs)

    @property
    def lost_filtered(self) -> bool:
        return self.filtered_docs is not None and self.loses(self.filtered_docs)

    def loses(self, docs: Sequence[str]) -> bool:
        """`docs` (the service's first documents) miss the known item although
        exact search has it, and what they hold instead scores strictly lower
        (exact cosine) than the known item: a real loss, not a tie."""
        if self.exact_rank is None or self.item.document_id in docs:
            return False
        if len(docs) < TOP_DOCS:
            return True
        weakest = min(self.exact_best[d] for d in docs)
        return self.exact_best[self.item.document_id] > weakest + TIE_EPSILON

    @property
    def differs(self) -> bool:
        """The service's first documents are not exact search's (ties aside)."""
        if self.service_docs == self.exact_docs:
            return False
        service = [self.exact_best[d] for d in self.service_docs]
        exact = [self.exact_best[d] for d in self.exact_docs]
        return len(service) != len(exact) or any(
            abs(a - b) > TIE_EPSILON for a, b in zip(service, exact, strict=True)
        )


def _mode_docs(outcome: QueryOutcome, mode: str) -> list[str]:
    return {
        "DENSE": outcome.service_docs,
        "KEYWORD": outcome.keyword_docs or [],
        "HYBRID": outcome.hybrid_docs or [],
        "exact": outcome.exact_docs,
    }[mode]


def _rank(docs: Sequence[str], document_id: str) -> int | None:
    return docs.index(document_id) + 1 if document_id in docs else None


@dataclasses.dataclass(frozen=True)
class Report:
    documents: int
    chunks: int
    chunk_size: int
    chunk_overlap: int
    chunk_unit: int
    ingest_seconds: float
    search_seconds: float
    outcomes: list[QueryOutcome]
    # For diagnosis: the vector ids, and each query's exact cosine with each.
    chunk_ids: list[str] = dataclasses.field(repr=False)
    scores: npt.NDArray[np.float64] = dataclasses.field(repr=False)

    @property
    def queries(self) -> int:
        return len(self.outcomes)

    def rate(self, rank: Callable[[QueryOutcome], int | None], within: int) -> float:
        hits = sum(1 for o in self.outcomes if (r := rank(o)) is not None and r <= within)
        return hits / len(self.outcomes) if self.outcomes else 0.0

    def mode_hit(self, mode: str, within: int) -> float:
        return self.rate(lambda o: _rank(_mode_docs(o, mode), o.item.document_id), within)

    def mode_mrr(self, mode: str) -> float:
        ranks = [_rank(_mode_docs(o, mode), o.item.document_id) for o in self.outcomes]
        return sum(1 / r for r in ranks if r is not None) / len(ranks) if ranks else 0.0

    def service_hit(self, within: int) -> float:
        return self.rate(lambda o: o.service_rank, within)

    def exact_hit(self, within: int) -> float:
        return self.rate(lambda o: o.exact_rank, within)

    def filtered_hit(self, within: int) -> float:
        return self.rate(lambda o: o.filtered_rank, within)

    @property
    def filtered(self) -> bool:
        return any(o.filtered_docs is not None for o in self.outcomes)

    @property
    def lost(self) -> list[QueryOutcome]:
        return [o for o in self.outcomes if o.lost]

    @property
    def lost_filtered(self) -> list[QueryOutcome]:
        return [o for o in self.outcomes if o.lost_filtered]

    @property
    def differing(self) -> list[QueryOutcome]:
        return [o for o in self.outcomes if o.differs]

    def markdown(self) -> str:
        rows = [
            ("documents", str(self.documents)),
            (
                "chunks",
                f"{self.chunks} (size {self.chunk_size}, overlap {self.chunk_overlap}, "
                f"{pb.ChunkUnit.Name(pb.ChunkUnit.ValueType(self.chunk_unit))})",
            ),
            ("queries", str(self.queries)),
            ("service hit@1", _pct(self.service_hit(1))),
            ("service hit@5", _pct(self.service_hit(TOP_DOCS))),
            ("exact brute-force hit@1", _pct(self.exact_hit(1))),
            ("exact brute-force hit@5", _pct(self.exact_hit(TOP_DOCS))),
            ("queries where the service lost a document brute force found", str(len(self.lost))),
            ("queries whose top-5 documents differ from brute force", str(len(self.differing))),
        ]
        if self.filtered:
            rows += [
                ("service hit@5, filter `chars >= 0` (every document)", _pct(self.filtered_hit(5))),
                ("queries the filtered service lost to brute force", str(len(self.lost_filtered))),
            ]
        for mode in ("DENSE", "KEYWORD", "HYBRID", "exact"):
            if mode in ("KEYWORD", "HYBRID") and all(
                _mode_docs(o, mode) == [] for o in self.outcomes
            ):
                continue
            name = "exact brute-force dense" if mode == "exact" else f"service {mode}"
            rows.append(
                (
                    f"{name} hit@1 / hit@5 / MRR",
                    f"{_pct(self.mode_hit(mode, 1))} / {_pct(self.mode_hit(mode, TOP_DOCS))}"
                    f" / {_pct(self.mode_mrr(mode))}",
                )
            )
        rows += [
            ("ingest seconds", f"{self.ingest_seconds:.1f}"),
            ("search seconds (all queries)", f"{self.search_seconds:.1f}"),
        ]
        lines = ["| measure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines)

    def misses(self) -> list[QueryOutcome]:
        """The queries the service does not find in its first documents."""
        return [o for o in self.outcomes if o.service_rank is None]


def _pct(value: float) -> str:
    return f"{value:.3f}"


def ingest(
    stub: pb_grpc.MetadataServiceStub,
    collection: str,
    documents: Sequence[Document],
    batch: int = 25,
    timeout: float = 600,
) -> float:
    """Upserts `documents` in batches; every one must come back INDEXED.
    Returns the seconds it took."""
    started = time.perf_counter()
    for part in _batches(documents, batch):
        request = pb.UpsertDocumentsRequest(
            collection=collection,
            documents=[
                pb.Document(id=d.id, text=d.text, metadata=metadata_to_proto(d.metadata))
                for d in part
            ],
        )
        results = stub.UpsertDocuments(request, timeout=timeout).results
        bad = [(r.id, r.state, r.status.message) for r in results]
        bad = [b for b in bad if b[1] != pb.UPSERT_STATE_INDEXED]
        if bad or len(results) != len(part):
            raise AssertionError(f"not indexed: {bad[:5]} ({len(results)}/{len(part)} results)")
    return time.perf_counter() - started


# A filter every document matches: the filtered path of the index must find
# what the unfiltered one does.
EVERYTHING = common_pb2.Filter(
    condition=common_pb2.Condition(
        key="chars", op=common_pb2.OPERATOR_GTE, value=common_pb2.MetadataValue(int_value=0)
    )
)


def service_documents(
    stub: pb_grpc.MetadataServiceStub,
    collection: str,
    query: str,
    top_k: int,
    where: common_pb2.Filter | None = None,
    *,
    mode: pb.SearchMode.ValueType = pb.SEARCH_MODE_DENSE,
) -> list[str]:
    """The first TOP_DOCS distinct documents of a Search, best first."""
    request = pb.SearchRequest(
        collection=collection, query=query, top_k=top_k, filter=where, mode=mode
    )
    hits = stub.Search(request, timeout=60).hits
    return _distinct(h.document_id for h in hits)[:TOP_DOCS]


def _distinct(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def chunk_vectors(
    vectors: vpb_grpc.VectorServiceStub, name: str, page: int = 500
) -> tuple[list[str], npt.NDArray[np.float32]]:
    """Every vector of the vector collection `name`: (ids, rows)."""
    ids: list[str] = []
    token = ""
    while True:
        response = vectors.ListIds(
            vpb.ListIdsRequest(collection=name, page_size=page, page_token=token), timeout=60
        )
        ids.extend(response.ids)
        token = response.next_page_token
        if not token:
            break
    ids.sort()
    rows: dict[str, list[float]] = {}
    for part in _batches(ids, page):
        got = vectors.Get(
            vpb.GetRequest(collection=name, ids=part, include_vectors=True), timeout=60
        )
        rows.update({r.id: list(r.vector.values) for r in got.records})
    missing = [i for i in ids if i not in rows or not rows[i]]
    if missing:
        raise AssertionError(f"vectors not returned: {missing[:5]}")
    return ids, np.array([rows[i] for i in ids], dtype=np.float32)


def embed(
    embedder: epb_grpc.EmbeddingServiceStub, texts: Sequence[str], batch: int = 64
) -> npt.NDArray[np.float32]:
    rows: list[list[float]] = []
    for part in _batches(texts, batch):
        response = embedder.Embed(epb.EmbedRequest(texts=part), timeout=120)
        rows += [list(e.values) for e in response.embeddings]
    return np.array(rows, dtype=np.float32)


def cosine(
    queries: npt.NDArray[np.float32], chunks: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """Exact cosine similarity of every query with every chunk (in float64)."""
    unit_q = queries.astype(np.float64)
    unit_c = chunks.astype(np.float64)
    unit_q /= np.linalg.norm(unit_q, axis=1, keepdims=True)
    unit_c /= np.linalg.norm(unit_c, axis=1, keepdims=True)
    return unit_q @ unit_c.T


def exact_best(
    scores: npt.NDArray[np.float64], chunk_docs: Sequence[str]
) -> list[dict[str, float]]:
    """Per query, every document's best exact cosine similarity over its chunks."""
    docs = sorted(set(chunk_docs))
    column = {d: i for i, d in enumerate(docs)}
    owner = np.array([column[d] for d in chunk_docs])
    best = np.full((scores.shape[0], len(docs)), -np.inf)
    for j in range(len(docs)):
        best[:, j] = scores[:, owner == j].max(axis=1)
    return [dict(zip(docs, row.tolist(), strict=True)) for row in best]


def evaluate(
    stub: pb_grpc.MetadataServiceStub,
    vector_channel: grpc.Channel,
    collection: str,
    documents: Sequence[Document],
    items: Sequence[KnownItem],
    *,
    top_k: int = 50,
    chunk_size: int = 0,
    chunk_overlap: int = 0,
    chunk_unit: pb.ChunkUnit.ValueType = pb.CHUNK_UNIT_UNSPECIFIED,
    filtered: bool = True,
    modes: bool = True,
) -> Report:
    """Creates `collection` (chunking 0: the service's defaults), ingests,
    then answers every item through Search (and, if `filtered`, again with
    EVERYTHING as its filter) and by exact search."""
    chunking = pb.ChunkingConfig(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, unit=chunk_unit
    )
    created = stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=collection,
            description="known-item evaluation: Python standard library documentation",
            chunking=chunking if chunk_size or chunk_unit else None,
        ),
        timeout=30,
    )
    ingest_seconds = ingest(stub, collection, documents)
    info = stub.GetCollection(pb.GetCollectionRequest(name=collection), timeout=30)

    started = time.perf_counter()
    service = [service_documents(stub, collection, i.query, top_k) for i in items]
    search_seconds = time.perf_counter() - started
    with_filter: list[list[str] | None] = [
        service_documents(stub, collection, i.query, top_k, where=EVERYTHING) if filtered else None
        for i in items
    ]

    keyword: list[list[str] | None] = [
        service_documents(stub, collection, i.query, top_k, mode=pb.SEARCH_MODE_KEYWORD)
        if modes
        else None
        for i in items
    ]
    hybrid: list[list[str] | None] = [
        service_documents(stub, collection, i.query, top_k, mode=pb.SEARCH_MODE_HYBRID)
        if modes
        else None
        for i in items
    ]
    ids, matrix = chunk_vectors(vpb_grpc.VectorServiceStub(vector_channel), info.vector_collection)
    if len(ids) != info.chunk_count:
        raise AssertionError(f"{len(ids)} vectors for {info.chunk_count} chunks")
    chunk_docs = [i.rpartition("#")[0] for i in ids]
    queries = embed(epb_grpc.EmbeddingServiceStub(vector_channel), [i.query for i in items])
    scores = cosine(queries, matrix)
    best = exact_best(scores, chunk_docs)
    outcomes = []
    for item, found, found_filtered, by_doc, kw, hy in zip(
        items, service, with_filter, best, keyword, hybrid, strict=True
    ):
        ranked = sorted(by_doc, key=lambda d: (-by_doc[d], d))
        outcomes.append(
            QueryOutcome(item, found, ranked[:TOP_DOCS], by_doc, found_filtered, kw, hy)
        )
    return Report(
        documents=len(documents),
        chunks=len(ids),
        chunk_size=created.chunking.chunk_size,
        chunk_overlap=created.chunking.chunk_overlap,
        chunk_unit=created.chunking.unit,
        ingest_seconds=ingest_seconds,
        search_seconds=search_seconds,
        outcomes=outcomes,
        chunk_ids=ids,
        scores=scores,
    )


def diagnose(
    report: Report,
    documents: Sequence[Document],
    embedder: epb_grpc.EmbeddingServiceStub,
) -> str:
    """Why the service misses what it misses, as Markdown: per miss, the known
    item's rank among all documents by exact cosine, whether one chunk holds
    the whole sentence, that chunk's tokens and whether the sentence lies past
    the model's window (cut off), its cosine with the query and the best other
    document's. Chunks are recomputed with the service's pure chunker; vector
    ids `<document id>#<ordinal>` number them the same way."""
    text_of = {d.id: d.text for d in documents}
    column = {vid: j for j, vid in enumerate(report.chunk_ids)}
    split = 0
    split_missed = 0
    rows = []
    for index, outcome in enumerate(report.outcomes):
        item = outcome.item
        tokens = report.chunk_unit == pb.CHUNK_UNIT_TOKENS
        unit = ChunkUnit.TOKENS if tokens else ChunkUnit.CHARACTERS
        spec = ChunkingSpec(report.chunk_size, report.chunk_overlap, unit)
        chunks = chunk_document(text_of[item.document_id], spec, PACKAGED_MODEL)
        if len(chunks) != sum(1 for v in column if v.rpartition("#")[0] == item.document_id):
            raise AssertionError(f"{item.document_id}: chunk count differs from the service's")
        holding = [c for c in chunks if item.query in c.text]
        missed = outcome.service_rank is None
        split += not holding
        split_missed += missed and not holding
        if not missed:
            continue
        best_other = next(d for d in outcome.exact_docs if d != item.document_id)
        row = [
            item.document_id,
            str(outcome.exact_full_rank),
            "yes" if holding else "no (split)",
        ]
        if holding:
            chunk = holding[0]
            upto = chunk.text[: chunk.text.index(item.query) + len(item.query)]
            full, prefix = embedder.Embed(epb.EmbedRequest(texts=[chunk.text, upto])).embeddings
            score = report.scores[index, column[f"{item.document_id}#{chunk.ordinal}"]]
            row += [str(full.token_count), "yes" if prefix.truncated else "no", f"{score:.3f}"]
        else:
            row += ["", "", f"{outcome.exact_best[item.document_id]:.3f}"]
        row += [f"{best_other} {outcome.exact_best[best_other]:.3f}", " ".join(item.query.split())]
        rows.append("| " + " | ".join(row) + " |")
    header = [
        f"{len(rows)} misses; query sentences split across chunks: {split} of "
        f"{report.queries} ({split_missed} of them missed)",
        "",
        "| document | exact rank | one chunk holds it | chunk tokens | past the window "
        "| cosine | best other document | query |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return "\n".join(header + rows)


def _batches(items: Sequence[T_], size: int) -> Iterator[list[T_]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def main(argv: Sequence[str] | None = None) -> int:
    """Child-interpreter entry point of `corpus()`: writes the documents as JSON."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-chars", type=int, default=MAX_CHARS)
    parser.add_argument("--min-chars", type=int, default=MIN_CHARS)
    args = parser.parse_args(argv)
    documents = build_documents(args.max_chars, args.min_chars)
    args.out.write_text(json.dumps([dataclasses.asdict(d) for d in documents]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
