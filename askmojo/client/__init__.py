"""`askmojo.client`: the Python SDK of the ASKMOJO storage services.

    from askmojo.client import Client

    with Client("localhost:50051") as client:
        client.get_or_create_collection("notes")
        doc = {"id": "a", "text": "WAL lets readers work", "metadata": {"year": 2024}}
        client.upsert("notes", [doc])
        for hit in client.search("notes", "concurrent readers", where={"year": {"$gte": 2020}}):
            print(hit.score, hit.document_id, hit.text)

`Client` / `AsyncClient` talk to the metadata service (collections, documents,
ingest, search, reconcile, stats); `VectorClient` / `AsyncVectorClient` to the
vector service (embeddings, vector collections). Every call has a deadline
(`timeout=`, 30 s by default), idempotent calls are retried by gRPC on
UNAVAILABLE / RESOURCE_EXHAUSTED, failures raise an `AskmojoError` subclass,
and filters are plain dictionaries in Chroma's spelling (`askmojo.client.filters`).
"""

from askmojo.client._aio import AsyncClient, AsyncVectorClient
from askmojo.client._channel import (
    DEFAULT,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    IDEMPOTENT_METHODS,
    NO_RETRIES,
    RetryPolicy,
    Timeout,
    resolve_target,
)
from askmojo.client._sync import Client, VectorClient
from askmojo.client.errors import (
    Aborted,
    AlreadyExists,
    AskmojoError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Violation,
)
from askmojo.client.filters import Where, compile_where
from askmojo.client.types import (
    Collection,
    CollectionDeleted,
    DatabaseStats,
    DeleteResult,
    Document,
    DocumentLike,
    DocumentState,
    Match,
    Metadata,
    ModelInfo,
    PoolStats,
    ReconcileReport,
    RecordLike,
    RecordResult,
    Scalar,
    SearchHit,
    SearchMode,
    SearchResults,
    Stats,
    StoredDocument,
    StoredRecord,
    UpsertResult,
    UpsertState,
    VectorCollectionInfo,
    VectorRecord,
)

__all__ = [
    "DEFAULT",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "IDEMPOTENT_METHODS",
    "NO_RETRIES",
    "Aborted",
    "AlreadyExists",
    "AskmojoError",
    "AsyncClient",
    "AsyncVectorClient",
    "Cancelled",
    "Client",
    "Collection",
    "CollectionDeleted",
    "DatabaseStats",
    "DeadlineExceeded",
    "DeleteResult",
    "Document",
    "DocumentLike",
    "DocumentState",
    "FailedPrecondition",
    "InvalidArgument",
    "InvalidFilter",
    "Match",
    "Metadata",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "PoolStats",
    "ReconcileReport",
    "RecordLike",
    "RecordResult",
    "ResourceExhausted",
    "RetryPolicy",
    "Scalar",
    "SearchHit",
    "SearchMode",
    "SearchResults",
    "Stats",
    "StoredDocument",
    "StoredRecord",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "UpsertResult",
    "UpsertState",
    "VectorClient",
    "VectorCollectionInfo",
    "VectorRecord",
    "Violation",
    "Where",
    "compile_where",
    "resolve_target",
]
