"""LangChain on the ASKMOJO storage services (`pip install 'askmojo-storage[langchain]'`).

    from askmojo.integrations.langchain import AskmojoVectorStore

    store = AskmojoVectorStore("notes", address="localhost:50051")
    store.add_texts(["WAL lets readers work"], metadatas=[{"year": 2024}], ids=["wal"])
    store.similarity_search("concurrent readers", k=4, filter={"year": {"$gte": 2020}})
    retriever = store.as_retriever(search_type="mmr")

`AskmojoVectorStore` is a LangChain `VectorStore` over one collection of the
metadata service; `AskmojoEmbeddings` a LangChain `Embeddings` over the vector
service's EmbeddingService. Both are thin: every call goes through the SDK
(`askmojo.client`), so deadlines, retries, API keys, TLS and typed errors are
the SDK's.

What differs from an in-process store:
- The service embeds. The store needs no `Embeddings` to add or search; its
  `embeddings` property is an `AskmojoEmbeddings` on the vector service (the
  model the collection was created with), used for MMR's query vector.
- The service chunks. A document longer than the collection's chunk size is
  split; a search returns the best-matching chunks (`page_content` is the
  chunk's text, `id` and `metadata` its document's), so one document can
  appear more than once.
- Indexing is asynchronous in the service; `add_texts`/`add_documents` return
  once every document added is INDEXED (`wait_indexed=True`, the default,
  bounded by `index_timeout`), so a search right after an add finds it.
- Metadata values are str, int, float or bool (keys `[A-Za-z0-9_.-]{1,64}`,
  not starting with "_"); `filter` is a dict in Chroma's spelling
  (`{"year": {"$gte": 2020}, "lang": "en"}`), compiled by the SDK.
- Searches are HYBRID unless `search_mode` says otherwise (the store's
  default, or per call: `as_retriever(search_kwargs={"search_mode":
  "keyword"})`): the keyword index and the vectors fused by reciprocal rank,
  so exact names and identifiers are found as well as meaning. A score is
  the mode's own, higher is better: the fused score (HYBRID), the cosine
  similarity (DENSE), the keyword score (KEYWORD). Relevance scores
  (`similarity_search_with_relevance_scores`, `score_threshold`) are in
  [0, 1] in every mode: see `AskmojoVectorStore`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

try:
    import numpy as np
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "askmojo.integrations.langchain needs LangChain: pip install 'askmojo-storage[langchain]'"
    ) from exc

from askmojo.client import (
    DEFAULT_TIMEOUT,
    AskmojoError,
    AsyncClient,
    AsyncVectorClient,
    Client,
    DocumentState,
    NotFound,
    SearchHit,
    SearchMode,
    SearchResults,
    StoredDocument,
    UpsertResult,
    UpsertState,
    VectorClient,
    Where,
)

__all__ = ["AskmojoEmbeddings", "AskmojoVectorStore", "IndexingTimeout"]


class _Closable(Protocol):
    async def close(self) -> None: ...


_T = TypeVar("_T", bound=_Closable)

#: Ids per DeleteDocuments call (the service takes up to 1000).
DELETE_BATCH = 500
#: Seconds `add_*` waits for its documents to be INDEXED by default.
DEFAULT_INDEX_TIMEOUT = 120.0
# Polling for INDEXED: the first pause, and the longest.
_FIRST_PAUSE = 0.02
_LONGEST_PAUSE = 0.5
# Unfinished (pending or failed) documents read per ListDocuments page.
_UNFINISHED_PAGE = 1000


class IndexingTimeout(TimeoutError):
    """Documents were stored but not all INDEXED within `index_timeout`:
    they will be, and a search finds them then. `pending` names them."""

    def __init__(self, pending: Sequence[str], timeout: float) -> None:
        shown = ", ".join(repr(i) for i in list(pending)[:5])
        more = f" and {len(pending) - 5} more" if len(pending) > 5 else ""
        super().__init__(
            f"{len(pending)} documents stored but not indexed within {timeout} s: {shown}{more}"
        )
        self.pending = list(pending)


class _PerLoop(Generic[_T]):
    """An asyncio client per event loop: a grpc.aio channel belongs to the
    loop it was opened in, while a LangChain object may be used from several
    (asyncio.run twice, a loop per test)."""

    def __init__(self, make: Callable[[], _T], given: _T | None = None) -> None:
        self._make = make
        self._given = given
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._value: _T | None = None

    def get(self) -> _T:
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        if self._value is None or self._loop is None or self._loop() is not loop:
            self._value = self._make()
            self._loop = weakref.ref(loop)
        return self._value

    async def aclose(self) -> None:
        """Closes the client this object made for the running loop."""
        value, self._value = self._value, None
        if (
            value is not None
            and self._loop is not None
            and self._loop() is asyncio.get_running_loop()
        ):
            await value.close()


class AskmojoEmbeddings(Embeddings):
    """LangChain `Embeddings` over the vector service's EmbeddingService: the
    model the service serves (the one its collections are indexed with),
    L2-normalised vectors.

    `address`: the vector service (default ASKMOJO_VECTOR_ADDRESS,
    VECTOR_SERVICE_ADDRESS, then localhost:50052); `api_key`, `ca_file`,
    `cert_file`, `key_file`, `timeout` as for `askmojo.client.VectorClient`;
    or pass ready clients (`client`, `async_client`)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        client: VectorClient | None = None,
        async_client: AsyncVectorClient | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "api_key": api_key,
            "ca_file": ca_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "timeout": timeout,
        }
        self._owns_client = client is None
        self.client = client if client is not None else VectorClient(address, **options)
        self._async = _PerLoop(lambda: AsyncVectorClient(address, **options), async_client)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        return self.client.embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return self.client.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        return await self.async_client().embed(list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return (await self.async_client().embed([text]))[0]

    def async_client(self) -> AsyncVectorClient:
        """The asyncio client of the running event loop."""
        return self._async.get()

    def close(self) -> None:
        """Closes the blocking client's channel (if this object made it)."""
        if self._owns_client:
            self.client.close()

    async def aclose(self) -> None:
        """Closes the asyncio client of the running loop (if this object made it)."""
        await self._async.aclose()


class AskmojoVectorStore(VectorStore):
    """A LangChain `VectorStore` over one collection of the metadata service.

    `collection_name`: the collection (created with the service's defaults
    unless it exists, when `create_collection` is true). `address`: the
    metadata service (default ASKMOJO_ADDRESS, METADATA_ADDRESS, then
    localhost:50051); `api_key`, `ca_file`, `cert_file`, `key_file`, `timeout`
    as for `askmojo.client.Client`; or pass ready clients (`client`,
    `async_client`). `embedding`: an `AskmojoEmbeddings` (default: one on
    `vector_address` with the same key and TLS), used for MMR only.
    `wait_indexed`: `add_*` returns once its documents are INDEXED (raising
    `IndexingTimeout` after `index_timeout` s). `search_mode`: "hybrid" (the
    service's default), "dense" or "keyword", for every search unless a call
    passes `search_mode=` itself.

    Relevance scores, in [0, 1] whatever the mode (each hit's own, so a
    `score_threshold` means the same on every query):
    - hybrid: the fused score over the highest a chunk can have, 1 when
      both retrievers rank it first (0.5: first by one of them and not found
      by the other); answered from the keyword index alone (the vector
      service away), over the highest that index alone can give;
    - dense: the cosine similarity, negative ones 0;
    - keyword: the keyword score over the first hit's (1 for the first),
      bm25 and ts_rank_cd having no scale of their own.
    """

    def __init__(
        self,
        collection_name: str,
        *,
        address: str | None = None,
        vector_address: str | None = None,
        api_key: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        client: Client | None = None,
        async_client: AsyncClient | None = None,
        embedding: AskmojoEmbeddings | None = None,
        create_collection: bool = True,
        wait_indexed: bool = True,
        index_timeout: float = DEFAULT_INDEX_TIMEOUT,
        search_mode: SearchMode | str = SearchMode.HYBRID,
    ) -> None:
        options: dict[str, Any] = {
            "api_key": api_key,
            "ca_file": ca_file,
            "cert_file": cert_file,
            "key_file": key_file,
            "timeout": timeout,
        }
        self.collection_name = collection_name
        self.search_mode = _search_mode(search_mode)
        self.wait_indexed = wait_indexed
        self.index_timeout = index_timeout
        self._owns_client = client is None
        self.client = client if client is not None else Client(address, **options)
        self._async = _PerLoop(lambda: AsyncClient(address, **options), async_client)
        self._embedding = embedding
        self._vector_address = vector_address
        self._options = options
        if create_collection:
            self.client.get_or_create_collection(collection_name)

    # --- construction ------------------------------------------------------------

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection_name: str = "langchain",
        **kwargs: Any,
    ) -> AskmojoVectorStore:
        """A store on `collection_name` (created if missing) with `texts`
        added. `embedding` must be an `AskmojoEmbeddings` or None: the
        service embeds with its collection's model, whatever is passed."""
        store = cls(collection_name, embedding=_askmojo_embedding(embedding), **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None = None,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        collection_name: str = "langchain",
        **kwargs: Any,
    ) -> AskmojoVectorStore:
        """`from_texts` without blocking the event loop."""
        kwargs["create_collection"] = False
        store = cls(collection_name, embedding=_askmojo_embedding(embedding), **kwargs)
        await store._async.get().get_or_create_collection(collection_name)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store

    @property
    def embeddings(self) -> AskmojoEmbeddings:
        """The vector service's embeddings (the query vector of MMR)."""
        if self._embedding is None:
            self._embedding = AskmojoEmbeddings(self._vector_address, **self._options)
        return self._embedding

    # --- adding ------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Creates or replaces documents (one per text, its id from `ids` or
        a new UUID) and returns their ids once they are INDEXED. A text and
        metadata equal to what is stored re-embeds nothing. Raises the SDK's
        error (e.g. `InvalidArgument` for metadata that is not str, int,
        float or bool) if any document was refused; the others are stored."""
        documents = _documents(texts, metadatas, ids)
        results = self.client.upsert(self.collection_name, documents)
        _raise_failures(results)
        if self.wait_indexed:
            self._wait_indexed(results)
        return [d["id"] for d in documents]

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """See `add_texts`."""
        documents = _documents(texts, metadatas, ids)
        results = await self._async.get().upsert(self.collection_name, documents)
        _raise_failures(results)
        if self.wait_indexed:
            await self._await_indexed(results)
        return [d["id"] for d in documents]

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Adds LangChain documents: their ids are `ids=` if given, else
        `Document.id`, else new UUIDs. See `add_texts`."""
        texts, metadatas, ids = _unpack(documents, kwargs.pop("ids", None))
        return self.add_texts(texts, metadatas, ids=ids, **kwargs)

    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """See `add_documents`."""
        texts, metadatas, ids = _unpack(documents, kwargs.pop("ids", None))
        return await self.aadd_texts(texts, metadatas, ids=ids, **kwargs)

    def _wait_indexed(self, results: Sequence[UpsertResult]) -> None:
        waiting = _not_yet_indexed(results)
        deadline = time.monotonic() + self.index_timeout
        pause = _FIRST_PAUSE
        while waiting:
            unfinished = self.client.list(
                self.collection_name,
                states=[DocumentState.PENDING, DocumentState.FAILED],
                page_size=_UNFINISHED_PAGE,
            )
            waiting = _still_waiting(waiting, unfinished)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise IndexingTimeout(sorted(waiting), self.index_timeout)
            time.sleep(pause)  # polling interval: the documents' state decides
            pause = min(pause * 2, _LONGEST_PAUSE)

    async def _await_indexed(self, results: Sequence[UpsertResult]) -> None:
        waiting = _not_yet_indexed(results)
        deadline = time.monotonic() + self.index_timeout
        pause = _FIRST_PAUSE
        client = self._async.get()
        while waiting:
            unfinished = [
                d
                async for d in client.list(
                    self.collection_name,
                    states=[DocumentState.PENDING, DocumentState.FAILED],
                    page_size=_UNFINISHED_PAGE,
                )
            ]
            waiting = _still_waiting(waiting, unfinished)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise IndexingTimeout(sorted(waiting), self.index_timeout)
            await asyncio.sleep(pause)  # polling interval: the documents' state decides
            pause = min(pause * 2, _LONGEST_PAUSE)

    # --- deleting and reading ------------------------------------------------------

    def delete(
        self, ids: list[str] | None = None, *, filter: Where | None = None, **kwargs: Any
    ) -> bool:
        """Deletes documents by `ids` (missing ones are ignored) or by
        `filter`, with their chunks and vectors. Unlike LangChain's default,
        neither deletes nothing but raises ValueError: `delete_collection`
        drops everything."""
        if ids is None and filter is None:
            raise ValueError("delete: give ids or filter (delete_collection() drops everything)")
        if filter is not None:
            self.client.delete(self.collection_name, where=filter)
        for batch in _batches(ids or [], DELETE_BATCH):
            self.client.delete(self.collection_name, batch)
        return True

    async def adelete(
        self, ids: list[str] | None = None, *, filter: Where | None = None, **kwargs: Any
    ) -> bool:
        """See `delete`."""
        if ids is None and filter is None:
            raise ValueError("delete: give ids or filter (delete_collection() drops everything)")
        client = self._async.get()
        if filter is not None:
            await client.delete(self.collection_name, where=filter)
        for batch in _batches(ids or [], DELETE_BATCH):
            await client.delete(self.collection_name, batch)
        return True

    def delete_collection(self) -> None:
        """Drops the collection with its documents and vectors."""
        self.client.delete_collection(self.collection_name)

    async def adelete_collection(self) -> None:
        """See `delete_collection`."""
        await self._async.get().delete_collection(self.collection_name)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents of `ids` that exist (whole texts), in the order of
        `ids`, each once."""
        found = []
        for id_ in dict.fromkeys(ids):
            try:
                stored = self.client.get(self.collection_name, id_)
            except NotFound:
                continue
            found.append(_stored_document(stored))
        return found

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """See `get_by_ids`."""
        client = self._async.get()

        async def one(id_: str) -> Document | None:
            try:
                stored = await client.get(self.collection_name, id_)
            except NotFound:
                return None
            return _stored_document(stored)

        found = await asyncio.gather(*(one(i) for i in dict.fromkeys(ids)))
        return [d for d in found if d is not None]

    # --- searching -------------------------------------------------------------------

    def similarity_search(
        self, query: str, k: int = 4, *, filter: Where | None = None, **kwargs: Any
    ) -> list[Document]:
        """The `k` chunks best matching `query`, best first, among documents
        matching `filter`, in the store's `search_mode` (or `search_mode=`)."""
        return [d for d, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, *, filter: Where | None = None, **kwargs: Any
    ) -> list[Document]:
        """See `similarity_search`."""
        found = await self.asimilarity_search_with_score(query, k, filter=filter, **kwargs)
        return [d for d, _ in found]

    def similarity_search_with_score(
        self, query: str, k: int = 4, *, filter: Where | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """`similarity_search` with each chunk's score in the search's mode
        (higher is better): fused (hybrid), cosine similarity (dense) or
        keyword score (keyword)."""
        hits = self._search(query, k, filter, self._mode(kwargs))
        return [(_document(h), h.score) for h in hits]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, *, filter: Where | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """See `similarity_search_with_score`."""
        hits = await self._asearch(query, k, filter, self._mode(kwargs))
        return [(_document(h), h.score) for h in hits]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # LangChain's similarity_search_with_relevance_scores (and a
        # retriever's score_threshold) come here; the class docstring says
        # what a relevance is in each mode. Overridden, not fed through
        # _select_relevance_score_fn: a score alone does not say it (HYBRID
        # needs to know whether the answer was degraded; KEYWORD, the first
        # hit's score).
        mode = self._mode(kwargs)
        hits = self._search(query, k, kwargs.get("filter"), mode)
        return [(_document(h), r) for h, r in zip(hits, _relevances(hits, mode), strict=True)]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        mode = self._mode(kwargs)
        hits = await self._asearch(query, k, kwargs.get("filter"), mode)
        return [(_document(h), r) for h, r in zip(hits, _relevances(hits, mode), strict=True)]

    def _mode(self, kwargs: dict[str, Any]) -> SearchMode:
        """A call's `search_mode=`, else the store's."""
        return _search_mode(kwargs.get("search_mode", self.search_mode))

    def _search(self, query: str, k: int, where: Where | None, mode: SearchMode) -> SearchResults:
        return self.client.search(self.collection_name, query, top_k=k, where=where, mode=mode)

    async def _asearch(
        self, query: str, k: int, where: Where | None, mode: SearchMode
    ) -> SearchResults:
        client = self._async.get()
        return await client.search(self.collection_name, query, top_k=k, where=where, mode=mode)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        *,
        filter: Where | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """`k` chunks chosen among the `fetch_k` most similar to `query` for
        similarity to it and diversity among themselves (`lambda_mult` 1:
        similarity only, 0: diversity only). The chunks' vectors come from the
        vector service (Get with vectors), the query's from its
        EmbeddingService."""
        hits = self._search(query, fetch_k, filter, self._mode(kwargs))
        if not hits:
            return []
        vector_collection = self.client.collection(self.collection_name).vector_collection
        embeddings = self.embeddings
        records = embeddings.client.get(
            vector_collection, [h.chunk_id for h in hits], include_vectors=True
        )
        query_vector = embeddings.embed_query(query)
        return _mmr(hits, {r.id: r.vector for r in records}, query_vector, k, lambda_mult)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        *,
        filter: Where | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """See `max_marginal_relevance_search`."""
        client = self._async.get()
        hits = await self._asearch(query, fetch_k, filter, self._mode(kwargs))
        if not hits:
            return []
        vectors = self.embeddings.async_client()
        collection, query_vectors = await asyncio.gather(
            client.collection(self.collection_name), vectors.embed([query])
        )
        records = await vectors.get(
            collection.vector_collection, [h.chunk_id for h in hits], include_vectors=True
        )
        return _mmr(hits, {r.id: r.vector for r in records}, query_vectors[0], k, lambda_mult)

    # --- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the blocking clients' channels this store made."""
        if self._owns_client:
            self.client.close()
        if self._embedding is not None:
            self._embedding.close()

    async def aclose(self) -> None:
        """Closes the asyncio clients of the running loop this store made."""
        await self._async.aclose()
        if self._embedding is not None:
            await self._embedding.aclose()


# --- helpers ------------------------------------------------------------------------------


def _askmojo_embedding(embedding: Embeddings | None) -> AskmojoEmbeddings | None:
    if embedding is None or isinstance(embedding, AskmojoEmbeddings):
        return embedding
    raise ValueError(
        f"AskmojoVectorStore embeds in the service with its collection's model; "
        f"{type(embedding).__name__} would be ignored. Pass AskmojoEmbeddings or None."
    )


def _documents(
    texts: Iterable[str], metadatas: list[dict[str, Any]] | None, ids: list[str] | None
) -> list[dict[str, Any]]:
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
    return [
        {
            "id": (ids[i] if ids is not None and ids[i] else None) or str(uuid.uuid4()),
            "text": text,
            "metadata": dict(metadatas[i]) if metadatas is not None else {},
        }
        for i, text in enumerate(texts)
    ]


def _unpack(
    documents: Sequence[Document], ids: list[str] | None
) -> tuple[list[str], list[dict[str, Any]], list[str] | None]:
    if ids is None and any(d.id for d in documents):
        ids = [d.id or "" for d in documents]  # "" gets a new UUID in _documents
    return [d.page_content for d in documents], [d.metadata for d in documents], ids


def _raise_failures(results: Sequence[UpsertResult]) -> None:
    failed = [r for r in results if not r.ok]
    if not failed:
        return
    first = failed[0].error or AskmojoError(f"document {failed[0].id!r} failed")
    listed = "; ".join(f"{r.id!r}: {r.message or r.state}" for r in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    stored = len(results) - len(failed)
    raise type(first)(
        f"{len(failed)} of {len(results)} documents not added ({stored} were): {listed}{more}",
        code=first.code,
        violations=first.violations,
    )


def _not_yet_indexed(results: Sequence[UpsertResult]) -> set[str]:
    # PENDING: stored, waiting for the vector service. UNCHANGED: stored
    # before, in whatever state that left it.
    return {r.id for r in results if r.state is not UpsertState.INDEXED}


def _still_waiting(waiting: set[str], unfinished: Iterable[StoredDocument]) -> set[str]:
    """Ours among the collection's PENDING and FAILED documents; raises for
    a FAILED one of ours."""
    still = set()
    for document in unfinished:
        if document.id not in waiting:
            continue
        if document.state is DocumentState.FAILED:
            raise AskmojoError(
                f"document {document.id!r} was stored but its indexing failed: {document.error}"
            )
        still.add(document.id)
    return still


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _stored_document(stored: StoredDocument) -> Document:
    return Document(id=stored.id, page_content=stored.text or "", metadata=dict(stored.metadata))


def _document(hit: SearchHit) -> Document:
    return Document(id=hit.document_id, page_content=hit.text, metadata=dict(hit.metadata))


def _relevance(score: float) -> float:
    return max(0.0, min(1.0, score))


# SearchRequest's contract (metadata_service.proto): a HYBRID hit's score is
# the sum over retrievers of weight / (RRF_K + rank), weights 1 unless given.
_RRF_K = 60


def _relevances(hits: SearchResults, mode: SearchMode) -> list[float]:
    """Each hit's relevance in [0, 1] (AskmojoVectorStore's docstring)."""
    if mode is SearchMode.DENSE:
        return [_relevance(h.score) for h in hits]
    if mode is SearchMode.KEYWORD:
        best = max((h.score for h in hits), default=0.0)
        return [_relevance(h.score / best) if best > 0 else 0.0 for h in hits]
    # HYBRID: both retrievers' first place, or the keyword index's alone.
    retrievers = 1 if hits.degraded else 2
    highest = retrievers / (_RRF_K + 1)
    return [_relevance(h.score / highest) for h in hits]


def _search_mode(mode: SearchMode | str) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in SearchMode)
        raise ValueError(f"search_mode must be one of {choices}, got {mode!r}") from None


def _mmr(
    hits: Sequence[SearchHit],
    vectors: dict[str, list[float] | None],
    query_vector: list[float],
    k: int,
    lambda_mult: float,
) -> list[Document]:
    # A chunk whose vector is gone (deleted since the search) is left out.
    candidates = [(h, v) for h in hits if (v := vectors.get(h.chunk_id))]
    if not candidates:
        return []
    chosen = maximal_marginal_relevance(
        np.array(query_vector, dtype=np.float32),
        [v for _, v in candidates],
        lambda_mult=lambda_mult,
        k=k,
    )
    return [_document(candidates[i][0]) for i in chosen]
