"""A chunk longer than the model's window is embedded only in part: the
vector service says so per record, the metadata service records it per
chunk, reports it per document and in GetStats, and the CLI warns."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from askmojo import cli
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from tests.conftest import RunningServer
from tests.pipeline.test_pipeline import Stub, doc, upsert

# ~600 words: far past MiniLM's 256-token window, inside one 6000-character chunk.
LONG = " ".join(
    f"Paragraph {i} explains how write-ahead logging keeps readers and writers apart."
    for i in range(60)
)
SHORT = "Cats sleep for most of the day."


def big_chunks(stub: Stub) -> str:
    name = f"big-{uuid.uuid4().hex[:8]}"
    stub.CreateCollection(
        pb.CreateCollectionRequest(
            name=name, chunking=pb.ChunkingConfig(chunk_size=6000, chunk_overlap=50)
        )
    )
    return name


def test_truncated_chunks_are_recorded_reported_and_counted(stub: Stub) -> None:
    assert len(LONG) < 6000
    collection = big_chunks(stub)
    request = pb.IngestDocumentsRequest(
        collection=collection, documents=[doc("long", LONG), doc("short", SHORT)]
    )
    [response] = stub.IngestDocuments(iter([request]), timeout=120)
    results = {r.id: (r.state, r.chunk_count, r.truncated_chunks) for r in response.results}
    assert results == {
        "long": (pb.UPSERT_STATE_INDEXED, 1, 1),
        "short": (pb.UPSERT_STATE_INDEXED, 1, 0),
    }
    assert stub.GetStats(pb.GetStatsRequest(collection=collection)).truncated_chunk_count == 1
    assert stub.GetStats(pb.GetStatsRequest()).truncated_chunk_count >= 1

    # A metadata-only change sends the stored vector back, not the text: the
    # chunk is still the truncated one.
    assert upsert(stub, collection, doc("long", LONG, topic="wal")) == [
        ("long", pb.UPSERT_STATE_INDEXED)
    ]
    assert stub.GetStats(pb.GetStatsRequest(collection=collection)).truncated_chunk_count == 1
    # New text in chunks that fit: nothing truncated any more.
    assert upsert(stub, collection, doc("long", SHORT + " And dogs.")) == [
        ("long", pb.UPSERT_STATE_INDEXED)
    ]
    assert stub.GetStats(pb.GetStatsRequest(collection=collection)).truncated_chunk_count == 0


def test_the_cli_warns_after_ingest_and_shows_the_count_in_stats(
    paired: RunningServer, stub: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    collection = big_chunks(stub)
    (tmp_path / "long.md").write_text(LONG)
    (tmp_path / "short.md").write_text(SHORT)
    code = cli.main(["--address", paired.address, "ingest", str(tmp_path), "-c", collection])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "2 indexed" in out[0]
    assert out[1] == (
        "1 chunk was longer than the model's window and was truncated; use smaller chunk_size"
    )
    assert cli.main(["--address", paired.address, "stats", "-c", collection]) == 0
    stats = capsys.readouterr().out
    assert "truncated chunks" in stats
    assert "1 (longer than the model's window" in stats
