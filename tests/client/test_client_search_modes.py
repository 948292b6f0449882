"""The SDK's search modes against the real pair: `mode=`, the weights, each
hit's ranks and scores, and `degraded` when HYBRID answers without the
vector service."""

from __future__ import annotations

import asyncio

import pytest

from askmojo.client import AsyncClient, Client, FailedPrecondition, SearchMode, SearchResults
from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.client.conftest import DOCS
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow


def test_modes_blocking(client: Client, name: str) -> None:
    client.create_collection(name)
    client.upsert(name, DOCS)
    hybrid = client.search(name, "concurrent readers", top_k=3)
    assert isinstance(hybrid, SearchResults) and not hybrid.degraded
    assert hybrid[0].document_id == "wal"
    assert hybrid[0].dense_rank >= 1 and hybrid[0].keyword_rank >= 1
    keyword = client.search(name, "readers", mode="keyword")
    assert [h.document_id for h in keyword] == ["wal"]
    assert keyword[0].keyword_rank == 1 and keyword[0].dense_rank == 0
    assert keyword[0].score == keyword[0].keyword_score > 0
    dense = client.search(name, "readers", mode=SearchMode.DENSE, top_k=2)
    assert len(dense) == 2 and all(h.keyword_rank == 0 and h.dense_rank for h in dense)
    weighted = client.search(name, "readers", dense_weight=0.0, keyword_weight=2.0)
    assert [h.document_id for h in weighted] == ["wal"]
    with pytest.raises(ValueError, match="unknown search mode"):
        client.search(name, "readers", mode="sparse")


def test_modes_asyncio(paired: RunningServer, name: str) -> None:
    async def main() -> None:
        async with AsyncClient(paired.address) as client:
            await client.create_collection(name)
            await client.upsert(name, DOCS)
            keyword = await client.search(name, "readers", mode="keyword")
            assert [h.document_id for h in keyword] == ["wal"] and not keyword.degraded

    asyncio.run(main())


def test_degraded_without_the_vector_service(settings: MetadataSettings, name: str) -> None:
    prepare_database(settings)  # VECTOR_SERVICE_ADDRESS empty
    with RunningServer.metadata(settings) as alone, Client(alone.address) as client:
        client.create_collection(name)
        client.upsert(name, DOCS)
        found = client.search(name, "readers")
        assert found.degraded and "no vector service" in found.degraded_reason
        assert [h.document_id for h in found] == ["wal"]
        with pytest.raises(FailedPrecondition):
            client.search(name, "readers", mode="dense")
