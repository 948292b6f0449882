"""Known-item search (issue #4): with 200 Python standard library module
documents ingested, a sentence taken from a document finds that document among
the first five at least 90% of the time, and the service (HNSW, filters, the
join with the database) never loses a document that exact brute-force cosine
search over the same chunk vectors finds. evals/known_item.py has the corpus
and the measure; scripts/eval_known_item.py runs it against running services.
"""

from __future__ import annotations

import grpc
import pytest

from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from evals import known_item
from tests.conftest import RunningServer

MODULES = 200
# Documents are capped shorter than the script's default (6,000 characters):
# the session's vector service embeds 800-character chunks at ~10-15 a second
# on a 2-core machine, and 200 documents of 1,500 characters make ~430 chunks.
MAX_CHARS = 1500


def test_corpus_is_deterministic_real_prose() -> None:
    documents, items = known_item.corpus(MODULES, MAX_CHARS)
    again = known_item.corpus(MODULES, MAX_CHARS)
    assert (documents, items) == again
    assert len(documents) == len(items) == MODULES
    assert [d.id for d in documents] == sorted({d.id for d in documents})
    texts = {d.id: d.text for d in documents}
    for item in items:
        assert item.query in texts[item.document_id]
        assert 8 <= len(item.query.split()) <= 40
        squeezed = " ".join(item.query.split())
        assert [i for i, t in texts.items() if squeezed in " ".join(t.split())] == [
            item.document_id
        ]
    for document in documents:
        assert known_item.MIN_CHARS <= len(document.text) <= MAX_CHARS
        assert document.metadata == {
            "package": document.id.partition(".")[0],
            "chars": len(document.text),
        }


@pytest.mark.slow
# SQLite only: the measure takes ~75 s per backend on 2 cores (PostgreSQL gave
# the same figures when run).
@pytest.mark.parametrize("backend_settings", ["sqlite"], indirect=True)
def test_known_item_search_finds_the_document_and_loses_nothing_to_exact_search(
    stub: pb_grpc.MetadataServiceStub, vector_server: RunningServer
) -> None:
    documents, items = known_item.corpus(MODULES, MAX_CHARS)
    with grpc.insecure_channel(vector_server.address) as channel:
        report = known_item.evaluate(stub, channel, "known-items", documents, items)
    table = report.markdown()
    print(table)  # shown with -s or -rA: the figures the issue asks to note
    assert report.documents == report.queries == MODULES

    lost = [(o.item.document_id, o.service_docs, o.exact_docs) for o in report.lost]
    assert not lost, f"the service lost documents exact search found: {lost}\n{table}"
    lost_filtered = [(o.item.document_id, o.filtered_docs) for o in report.lost_filtered]
    assert not lost_filtered, f"with a filter, the service lost documents: {lost_filtered}"
    misses = [(o.item.document_id, o.exact_full_rank, o.item.query) for o in report.misses()]
    assert report.service_hit(known_item.TOP_DOCS) >= 0.90, f"{table}\nmisses: {misses}"
    # Issue #14: the default chunking is in tokens; fused search finds what
    # dense search does (at most 0.01 fewer) and what keywords find.
    assert report.chunk_unit == pb.CHUNK_UNIT_TOKENS
    dense, hybrid = (report.mode_hit(m, known_item.TOP_DOCS) for m in ("DENSE", "HYBRID"))
    assert hybrid >= dense - 0.01, table
    assert hybrid >= 0.97, table


def test_second_corpus_and_independent_queries_are_deterministic() -> None:
    """The installed distributions' READMEs (issue #14): sorted, capped, the
    same on every call; their summary queries are not copied from the text;
    the stdlib summaries are removed from the text they query."""
    from evals import hybrid

    sets = hybrid.package_sets(40, MAX_CHARS)
    assert sets == hybrid.package_sets(40, MAX_CHARS)
    sentences, summaries = sets
    assert [d.id for d in sentences.documents] == sorted(d.id for d in sentences.documents)
    assert len(sentences.documents) == 40 and len(summaries.items) >= 20
    texts = {d.id: " ".join(d.text.lower().split()) for d in summaries.documents}
    for item in summaries.items:
        assert " ".join(item.query.lower().split()) not in texts[item.document_id]
    stdlib = hybrid.stdlib_sets(MODULES, MAX_CHARS)[1]
    stdlib_texts = {d.id: d.text for d in stdlib.documents}
    assert len(stdlib.items) >= 80
    for item in stdlib.items:
        assert " ".join(item.query.lower().split()) not in " ".join(
            stdlib_texts[item.document_id].lower().split()
        )
