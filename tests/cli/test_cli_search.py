"""`askmojo ingest`, `search` and `reconcile` against the real pair: a
metadata service wired to the session's vector service (real model,
embedded Chroma), so documents end INDEXED and searches find them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.cli.conftest import Runner
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow


@pytest.fixture
def paired(settings: MetadataSettings, vector_server: RunningServer) -> Iterator[RunningServer]:
    paired_settings = settings.model_copy(update={"vector_service_address": vector_server.address})
    prepare_database(paired_settings)
    with RunningServer.metadata(paired_settings) as running:
        yield running


def ranked_ids(table: str, known: list[str]) -> list[str]:
    """Document ids in the order of the table's rows."""
    found = []
    for line in table.splitlines():
        for doc_id in known:
            if re.search(rf"│ {re.escape(doc_id)}\s", line):
                found.append(doc_id)
    return found


def test_ingest_search_and_reconcile(run_cli: Runner, paired: RunningServer, corpus: Path) -> None:
    address = ("--address", paired.address)
    ingested = run_cli(*address, "ingest", str(corpus), "-c", "docs")
    assert ingested.code == 1  # the latin-1 file
    assert "4 indexed, 0 unchanged, 0 pending, 1 failed" in ingested.out

    ids = ["wal.md", "grpc.txt", "nested/cats.md", "nested/deeper/chroma.txt"]
    found = run_cli(*address, "search", "readers and writers in a database file", "-c", "docs")
    assert (found.code, found.err) == (0, "")
    assert "4 results for 'readers and writers in a database file' in docs" in found.out
    assert ranked_ids(found.out, ids)[0] == "wal.md"
    # Scores with three decimals, and the snippet of the chunk.
    assert re.search(
        r"│\s+1 │ 0\.\d{3} │ wal\.md\s+│ # Write-ahead logging SQLite in WAL", found.out
    )

    only_txt = run_cli(
        *address,
        "search",
        "nearest neighbours",
        "-c",
        "docs",
        "-k",
        "1",
        "--where",
        "extension=txt",
    )
    assert only_txt.code == 0
    assert ranked_ids(only_txt.out, ids) == ["nested/deeper/chroma.txt"]

    typed = run_cli(
        *address, "search", "cats", "-c", "docs", "--where", "bytes=1", "--where", "extension=md"
    )
    assert typed.out.startswith("no results for 'cats' in docs")

    checked = run_cli(*address, "reconcile", "-c", "docs", "--dry-run")
    assert (checked.code, checked.err) == (0, "")
    assert checked.out == (
        "dry run on docs: would re-index 0 missing vectors, remove 0 orphan vectors, "
        "replace 0 stale vectors, resume 0 pending or failed chunks\n"
    )
    repaired = run_cli(*address, "reconcile", "-c", "docs")
    assert repaired.out.startswith("reconciled docs: 0 missing vectors re-indexed")
