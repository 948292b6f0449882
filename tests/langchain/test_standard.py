"""LangChain's standard integration suites, unchanged, against the real
services: `VectorStoreIntegrationTests` on `AskmojoVectorStore` (a fresh
collection per test) and `EmbeddingsIntegrationTests` on `AskmojoEmbeddings`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from langchain_tests.integration_tests import (
    EmbeddingsIntegrationTests,
    VectorStoreIntegrationTests,
)

from askmojo.integrations.langchain import AskmojoEmbeddings, AskmojoVectorStore
from tests.conftest import RunningServer

pytestmark = pytest.mark.slow


class TestAskmojoVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(  # type: ignore[override]
        self, metadata_server: RunningServer, vector_server: RunningServer
    ) -> Iterator[AskmojoVectorStore]:
        """An empty store: a collection of its own, dropped afterwards."""
        store = AskmojoVectorStore(
            f"lc-{uuid.uuid4().hex[:12]}",
            address=metadata_server.address,
            vector_address=vector_server.address,
        )
        try:
            yield store
        finally:
            store.delete_collection()
            store.close()


class TestAskmojoEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[AskmojoEmbeddings]:
        return AskmojoEmbeddings

    @pytest.fixture
    def model(self, vector_server: RunningServer) -> Iterator[AskmojoEmbeddings]:  # type: ignore[override]
        """The suite's model fixture, on the session's vector service (its
        address is known only once the service runs)."""
        embeddings = self.embeddings_class(vector_server.address)
        try:
            yield embeddings
        finally:
            embeddings.close()
