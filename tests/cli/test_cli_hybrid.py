"""`askmojo search --mode` and the keyword index in `askmojo stats`, against
the real pair, and alone (no vector service: HYBRID is degraded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.cli.conftest import Runner
from tests.cli.test_cli_search import ranked_ids
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

IDS = ["wal.md", "grpc.txt", "nested/cats.md", "nested/deeper/chroma.txt"]


@pytest.fixture
def paired(settings: MetadataSettings, vector_server: RunningServer) -> Iterator[RunningServer]:
    paired_settings = settings.model_copy(update={"vector_service_address": vector_server.address})
    prepare_database(paired_settings)
    with RunningServer.metadata(paired_settings) as running:
        yield running


def test_search_modes(run_cli: Runner, paired: RunningServer, corpus: Path) -> None:
    address = ("--address", paired.address)
    run_cli(*address, "ingest", str(corpus), "-c", "docs")
    keyword = run_cli(*address, "search", "purr", "-c", "docs", "--mode", "keyword")
    assert (keyword.code, keyword.err) == (0, "")
    assert ranked_ids(keyword.out, IDS) == ["nested/cats.md"]
    assert "degraded" not in keyword.out and "dense/keyword" not in keyword.out
    dense = run_cli(*address, "search", "purr", "-c", "docs", "--mode", "dense", "-k", "2")
    assert dense.code == 0 and len(ranked_ids(dense.out, IDS)) == 2
    hybrid = run_cli(*address, "search", "purr", "-c", "docs", "--ranks")
    assert hybrid.code == 0 and ranked_ids(hybrid.out, IDS)[0] == "nested/cats.md"
    assert "dense/keyword #" in hybrid.out and "degraded" not in hybrid.out
    cats_row = next(line for line in hybrid.out.splitlines() if "nested/cats.md" in line)
    assert cats_row.rstrip(" │").endswith("/1")  # the keyword index ranked it first
    bad = run_cli(*address, "search", "purr", "-c", "docs", "--mode", "sparse")
    assert bad.code == 2 and "invalid choice" in bad.err
    stats = run_cli(*address, "stats")
    assert stats.code == 0 and "keyword index" in stats.out


def test_search_without_the_vector_service_is_degraded(
    run_cli: Runner, settings: MetadataSettings, corpus: Path
) -> None:
    prepare_database(settings)  # VECTOR_SERVICE_ADDRESS empty
    with RunningServer.metadata(settings) as alone:
        address = ("--address", alone.address)
        run_cli(*address, "ingest", str(corpus), "-c", "docs")
        found = run_cli(*address, "search", "readers and one writer", "-c", "docs")
        assert found.code == 0
        assert found.out.startswith("degraded: keyword only (")
        assert ranked_ids(found.out, IDS)[0] == "wal.md"
        dense = run_cli(*address, "search", "readers", "-c", "docs", "--mode", "dense")
        assert dense.code == 1 and "vector service" in dense.err
