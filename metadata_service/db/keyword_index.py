"""The keyword index over chunk text: SQLite FTS5 (bm25) or PostgreSQL full
text search (ts_rank_cd over a bounded candidate set), behind one small
interface.

The database keeps the index itself (migration 0005: triggers on `chunks` on
SQLite, a generated `tsvector` column on PostgreSQL), so every transaction
that writes or deletes chunks changes it too, and a search reads live chunks
only: a deleted or rewritten document is never found.

User text never reaches FTS5 or tsquery syntax: `query_terms` splits it into
Unicode words and each becomes a quoted string (FTS5) or a quoted lexeme
(tsquery), joined by OR, so quotes, operators, NEAR, `*` or parentheses are
just characters that separate words. Documents having more of the terms rank
higher (bm25 sums over terms). Functions take the caller's session and never
commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    any_,
    bindparam,
    column,
    func,
    literal_column,
    select,
    table,
    text,
    union,
)
from sqlalchemy.orm import Session

from askmojo.common.filters import FilterNode
from metadata_service.db.filters_sql import filter_clause
from metadata_service.db.models import ChunkRow, DocumentRow

# Distinct words of a query that are searched for; the rest are ignored (a
# query is at most MAX_QUERY_BYTES, but a bounded OR keeps every search cheap).
MAX_TERMS = 64
# Longer "words" are no words (a base64 blob, a hash run together): cut, so a
# term never makes a huge token either.
MAX_TERM_CHARS = 64

_Hits = Select[int, str, int, float]

_FTS = table("chunks_fts", column("rowid"))

_WORD = re.compile(r"\w+")
# Matches the tokenizers: FTS5's unicode61 and PostgreSQL's parser split on
# underscores too; splitting here keeps each term one token.
_SPLIT = re.compile(r"_+")


@dataclass(frozen=True)
class KeywordHit:
    chunk_pk: int
    # The chunk's place: its document's external id and its ordinal.
    document_id: str
    ordinal: int
    # 1 for the best match.
    rank: int
    # Higher is better: -bm25 on SQLite, ts_rank_cd on PostgreSQL (not
    # comparable across backends, only within one result list).
    score: float


# PostgreSQL's English stop words (its 'english' configuration drops them
# from documents and queries alike). Dropped from SQLite queries too: they
# add next to nothing to bm25 (a word in most chunks has an idf near zero),
# but an OR of "the" matches nearly every chunk, and each match is scored.
_STOP_WORDS_TEXT = """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will
    just don should now"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def query_terms(query: str) -> list[str]:
    """The distinct lower-cased words of `query`, in order, without stop
    words (unless there is nothing else), at most MAX_TERMS of them."""
    terms: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(query.lower()):
        for part in _SPLIT.split(word):
            term = part[:MAX_TERM_CHARS]
            if term and term not in seen:
                seen.add(term)
                terms.append(term)
    content = [term for term in terms if term not in STOP_WORDS]
    return (content or terms)[:MAX_TERMS]


def fts5_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression finding any of the terms, each an FTS5 string
    (inner double quotes doubled), so no term is ever read as syntax."""
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def tsquery_text(terms: list[str], operator: str = "|") -> str:
    """A to_tsquery expression finding any (`|`) or all (`&`) of the terms,
    each a quoted lexeme (inner quotes and backslashes escaped); to_tsquery
    stems them and drops stop words as it does the documents' words."""
    if operator not in {"|", "&"}:
        raise ValueError(f"operator must be | or &, got {operator!r}")
    escaped = (term.replace("\\", "\\\\").replace("'", "''") for term in terms)
    return f" {operator} ".join(f"'{term}'" for term in escaped)


def search(
    session: Session,
    collection_id: int,
    query: str,
    where: FilterNode | None,
    limit: int,
) -> list[KeywordHit]:
    """The `limit` chunks of a collection best matching the words of
    `query`, whose documents match `where`, best first."""
    terms = query_terms(query)
    if not terms or limit <= 0:
        return []
    if session.get_bind().dialect.name == "sqlite":
        stmt = _sqlite_search(terms, collection_id, where)
    else:
        stmt = _postgresql_search(terms, collection_id, where, limit)
    return [
        KeywordHit(int(pk), str(doc), int(ordinal), rank, float(value))
        for rank, (pk, doc, ordinal, value) in enumerate(
            session.execute(stmt.limit(limit)), start=1
        )
    ]


def _in_collection(collection_id: int, where: FilterNode | None) -> list[ColumnElement[bool]]:
    conditions = [DocumentRow.collection_id == collection_id]
    return conditions if where is None else [*conditions, filter_clause(where)]


def _sqlite_search(terms: list[str], collection_id: int, where: FilterNode | None) -> _Hits:
    """FTS5 ranks the whole match itself, fast: bm25 over its own index."""
    fts: ColumnElement[Any] = literal_column("chunks_fts")
    # bm25() is lower for better matches: negated, higher is better.
    score: ColumnElement[float] = (-func.bm25(fts)).label("keyword_score")
    match: ColumnElement[bool] = fts.op("MATCH")(bindparam("fts_query", fts5_query(terms)))
    stmt = (
        select(ChunkRow.id, DocumentRow.external_id, ChunkRow.ordinal, score)
        # The FTS table drives the scan: bm25() needs it as the MATCH's table.
        .select_from(_FTS)
        .join(ChunkRow, ChunkRow.id == _FTS.c.rowid)
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(match)
    )
    return stmt.where(*_in_collection(collection_id, where)).order_by(score.desc(), ChunkRow.id)


# PostgreSQL ranks (ts_rank_cd) about twice this many candidates at most.
PG_CANDIDATES = 500


def _postgresql_search(
    terms: list[str], collection_id: int, where: FilterNode | None, limit: int
) -> _Hits:
    """ts_rank_cd over a bounded candidate set. Ranking every match is what
    made common words slow: ts_rank_cd reads each matching row's tsvector
    (~20 us a row), and "return the value" matches half of a 40,000-chunk
    collection (0.5-1.3 s a query). The GIN index finds the chunks holding a
    term cheaply, and a LIMIT stops each scan early, so the candidates are:
    up to PG_CANDIDATES chunks holding every term (those rank highest), and
    for each term up to PG_CANDIDATES / terms chunks holding it (at least
    `limit`), so every chunk holding a rare term is ranked however common
    the others are. Exact for every query none of whose terms is held by
    more chunks than that; otherwise the chunks holding only common terms
    are a sample (the first met), not the best of them."""
    config: ColumnElement[Any] = literal_column("'english'::regconfig")
    vector: ColumnElement[Any] = literal_column("chunks.text_search")
    any_terms = func.to_tsquery(config, bindparam("ts_any", tsquery_text(terms)))

    def tier(tsquery: ColumnElement[Any], cap: int) -> Select[int]:
        stmt = (
            select(ChunkRow.id)
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(vector.op("@@")(tsquery), *_in_collection(collection_id, where))
        )
        return stmt.limit(cap)

    per_term = max(limit, PG_CANDIDATES // len(terms))
    tiers = [
        tier(func.to_tsquery(config, bindparam(f"ts_{i}", tsquery_text([term]))), per_term)
        for i, term in enumerate(terms)
    ]
    if len(terms) > 1:
        every = func.to_tsquery(config, bindparam("ts_all", tsquery_text(terms, "&")))
        tiers.append(tier(every, max(limit, PG_CANDIDATES)))
    found = union(*tiers).subquery() if len(tiers) > 1 else tiers[0].subquery()
    # `= ANY(array(...))`, not `IN (...)`: the candidates are then looked up
    # by primary key; as a semi-join the planner hashed them against a scan
    # of every chunk.
    candidates = any_(func.array(select(found.c.id).scalar_subquery()))
    score: ColumnElement[float] = func.ts_rank_cd(vector, any_terms).label("keyword_score")
    return (
        select(ChunkRow.id, DocumentRow.external_id, ChunkRow.ordinal, score)
        .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
        .where(ChunkRow.id == candidates)
        .order_by(score.desc(), ChunkRow.id)
    )


def index_size(session: Session) -> int:
    """Bytes the keyword index takes on disk, all collections together (as
    GetStats documents it). Deliberately not per collection: the index is one
    structure for every collection (one FTS5 table, one GIN index), whose
    pages hold the terms of all of them mixed, so no size of one collection's
    part exists to be read. A share in proportion to its chunks' text would
    be an estimate reported as a measurement, and costs a scan of the
    collection's chunks on every GetStats."""
    if session.get_bind().dialect.name == "sqlite":
        stmt = text(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN "
            "('chunks_fts_data', 'chunks_fts_idx', 'chunks_fts_docsize', 'chunks_fts_config')"
        )
    else:
        stmt = text("SELECT coalesce(pg_relation_size('ix_chunks_text_search'), 0)")
    return int(session.execute(stmt).scalar_one())
