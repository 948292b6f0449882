"""A vector client that holds its upload, so a test can make something
happen (a rewrite, a delete, a lease running out) while a send is under way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from metadata_service.vector_client import RecordAck, VectorClient, VectorRecord


class HeldVectorClient(VectorClient):
    """The real client, whose UpsertStream waits until `go` is set
    (`sending` is set once it waits)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, 4 * 1024 * 1024)
        self.sending = asyncio.Event()
        self.go = asyncio.Event()

    async def upsert_stream(
        self, collection: str, batches: Sequence[Sequence[VectorRecord]], deadline: float
    ) -> AsyncIterator[list[RecordAck]]:
        self.sending.set()
        await self.go.wait()
        async for acks in super().upsert_stream(collection, batches, deadline):
            yield acks
