"""Settings of the metadata service: environment variables, then `.env`.

One instance is built in `main()` (or by a test) and passed down; nothing reads
the environment anywhere else.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from askmojo.common.limits import SentLimits
from askmojo.common.settings import ServiceSettings, usable_cpus
from askmojo.common.targets import check_address
from metadata_service.domain import ChunkUnit

_CPUS = usable_cpus()
# Keys the indexer adds to every vector's metadata beside a document's own
# (_doc _ord _inc _gen _hash: indexing.vector_metadata; a test keeps it honest).
RESERVED_VECTOR_KEYS = 5
# Vectors Reconcile compares per step (bounded memory on any collection size);
# also the ids of one vector Get or Delete it makes.
RECONCILE_PAGE_IDS = 500


class MetadataSettings(ServiceSettings):
    # METADATA_<NAME> wins over <NAME> (askmojo.common.settings).
    env_service_prefix = "METADATA_"

    # Unset: 127.0.0.1 in development, every interface in production.
    metadata_host: str | None = None
    # 0 picks a free port (logged at start-up); tests use it.
    metadata_port: int = Field(default=50051, ge=0, le=65535)
    # Worker processes sharing the port (SO_REUSEPORT). None: 1 in development,
    # one per CPU in production.
    workers: int | None = Field(default=None, ge=1, le=256)
    # Empty: no vector service; chunks stay PENDING until one is configured.
    # Several replicas: `vector-1:50052,vector-2:50052` or a gRPC target
    # (`dns:///vector:50052`); calls go round robin to the healthy ones.
    vector_service_address: str = "localhost:50052"
    # How this service calls the vector service: its key (unset: API_KEY, so
    # one key in `.env` opens the pair), the CA that signed its certificate
    # (TLS), and this service's own certificate and key when it asks for one
    # (mTLS).
    vector_service_api_key: SecretStr | None = None
    vector_service_ca_file: str | None = None
    vector_service_client_cert_file: str | None = None
    vector_service_client_key_file: str | None = None
    # Prometheus text endpoint (/metrics) on this port; 0: off. With WORKERS
    # > 1 one scrape sees every worker.
    metadata_metrics_port: int = Field(default=0, ge=0, le=65535)

    # --- database (DESIGN.md §5) ---
    database_url: str = "sqlite:///./data/metadata.db"
    pool_size: int = Field(default=max(5, _CPUS), ge=1)
    max_overflow: int = Field(default=20, ge=0)
    pool_pre_ping: bool = True
    pool_recycle: int = Field(default=3600, description="seconds")
    # Seconds a writer waits for SQLite's lock before giving up (busy_timeout).
    sqlite_timeout: float = Field(default=20.0, gt=0)
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "NORMAL"
    sqlite_cache_size_kib: int = Field(default=64 * 1024, ge=0)
    sqlite_mmap_size: int = Field(default=256 * 1024 * 1024, ge=0)
    sqlite_temp_store: Literal["DEFAULT", "FILE", "MEMORY"] = "MEMORY"
    # Threads running database work for the event loop. None: POOL_SIZE, so a
    # thread never waits for a connection.
    db_threads: int | None = Field(default=None, ge=1)

    # --- indexing pipeline (DESIGN.md §6) ---
    # Chunks per Upsert call to the vector service.
    index_batch_records: int = Field(default=256, ge=1, le=1000)
    # Seconds an indexer holds chunks it is sending; a crashed holder's work
    # is taken over after this.
    index_lease_seconds: float = Field(default=120.0, gt=0)
    # Seconds a background indexing call may take.
    index_call_timeout: float = Field(default=60.0, gt=0)
    # Seconds between outbox scans when idle; the longest retry backoff.
    index_poll_seconds: float = Field(default=2.0, gt=0)
    index_max_backoff: float = Field(default=30.0, gt=0)
    # Ingest calls wait for their own chunks' vectors (and report INDEXED)
    # up to this many seconds, then leave the rest to the background loop.
    index_on_write_timeout: float = Field(default=120.0, ge=0)
    # IngestDocuments batches stored and being indexed at once: the vector
    # service embeds one while the next is written and the last answered.
    ingest_batches_in_flight: int = Field(default=4, ge=1, le=64)
    max_search_top_k: int = Field(default=100, ge=1)
    # Bytes of a Search query. Longer ones are refused (INVALID_ARGUMENT on
    # `query`) before the vector service sees them: the model reads only its
    # first ~256 tokens anyway. Keep it under the vector service's
    # MAX_TEXT_LENGTH (characters), or that service refuses first.
    max_query_bytes: int = Field(default=16384, ge=1)
    # Documents a delete by filter removes per transaction, each batch's
    # vectors in one vector Delete call: bounded memory and calls however
    # many documents match (the vector service takes at most ~1000 per call).
    delete_batch_documents: int = Field(default=500, ge=1, le=1000)

    # --- collection defaults ---
    default_embedding_model: str = "all-MiniLM-L6-v2"
    default_embedding_dimension: int = Field(default=384, ge=1)
    # Characters. A chunk's vector averages all its tokens, so a sentence in a
    # long chunk is diluted: smaller chunks find it more often (known-item
    # evaluation: docs/benchmarks.md). 400 keeps a chunk (~100 tokens) well
    # inside MiniLM's 256-token window with context enough for an answer.
    default_chunk_size: int = Field(default=400, ge=50)
    default_chunk_overlap: int = Field(default=50, ge=0)
    # The unit of new collections whose model's tokenizer this service has
    # (others count characters), and the sizes in tokens. Chosen from the
    # known-item evaluation (issue #14, evals/results.md).
    default_chunk_unit: ChunkUnit = ChunkUnit.TOKENS
    default_chunk_size_tokens: int = Field(default=128, ge=16)
    default_chunk_overlap_tokens: int = Field(default=16, ge=0)

    # --- limits: each violation is a clear INVALID_ARGUMENT ---
    # The column is VARCHAR(512).
    max_document_id_bytes: int = Field(default=512, ge=1, le=512)
    max_text_bytes: int = Field(default=1024 * 1024, ge=1)
    max_metadata_keys: int = Field(default=32, ge=0)
    max_metadata_string_bytes: int = Field(default=4096, ge=1)
    max_batch_documents: int = Field(default=1000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    default_page_size: int = Field(default=100, ge=1)
    max_chunk_size: int = Field(default=8000, ge=50)
    # Over this a request is refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_concurrent_rpcs: int = Field(default=4096, ge=1)
    # Key signing page tokens (HMAC-SHA256), shared by every worker and
    # replica. Unset: a random one made once and kept in the database.
    page_token_secret: SecretStr | None = Field(default=None, min_length=16)
    # Seconds between readiness probes of the database (health service).
    health_probe_interval: float = Field(default=5.0, gt=0)

    @field_validator("vector_service_address")
    @classmethod
    def _vector_address(cls, address: str) -> str:
        # Refused at start-up, naming the setting, rather than at the first
        # call to the vector service.
        if address.strip():
            try:
                check_address(address)
            except ValueError as exc:
                raise PydanticCustomError(
                    "vector_service_address",
                    "VECTOR_SERVICE_ADDRESS {problem}",
                    {"problem": str(exc)},
                ) from None
        return address.strip()

    @model_validator(mode="after")
    def _check(self) -> MetadataSettings:
        if self.default_chunk_overlap * 2 >= self.default_chunk_size:
            raise ValueError("DEFAULT_CHUNK_OVERLAP must be less than half of DEFAULT_CHUNK_SIZE")
        if self.default_chunk_overlap_tokens * 2 >= self.default_chunk_size_tokens:
            raise ValueError(
                "DEFAULT_CHUNK_OVERLAP_TOKENS must be less than half of DEFAULT_CHUNK_SIZE_TOKENS"
            )
        if self.default_page_size > self.max_page_size:
            raise ValueError("DEFAULT_PAGE_SIZE must not exceed MAX_PAGE_SIZE")
        # A ListDocuments page holds at least one document, so the largest
        # one the limits admit must fit in a message. (Imported here: paging
        # holds the sizes, and settings must load before anything else.)
        from metadata_service.paging import RESPONSE_MARGIN_BYTES, largest_document_bytes

        smallest_message = RESPONSE_MARGIN_BYTES + largest_document_bytes(
            max_text_bytes=self.max_text_bytes,
            max_document_id_bytes=self.max_document_id_bytes,
            max_metadata_keys=self.max_metadata_keys,
            max_metadata_string_bytes=self.max_metadata_string_bytes,
        )
        if self.max_message_bytes < smallest_message:
            raise ValueError(
                f"MAX_MESSAGE_BYTES must be at least {smallest_message}: a document of "
                "MAX_TEXT_BYTES with MAX_METADATA_KEYS keys of MAX_METADATA_STRING_BYTES "
                "must fit in one ListDocuments response"
            )
        return self

    @property
    def listen_host(self) -> str:
        return self.default_host(self.metadata_host, production=self.is_production)

    @property
    def vector_service_key(self) -> SecretStr | None:
        return self.vector_service_api_key or self.api_key

    @property
    def sent_to_vector_service(self) -> SentLimits:
        """The most this service sends the vector service, checked against
        its GetModelInfo when it is first reached."""
        return SentLimits(
            metadata_keys=self.max_metadata_keys + RESERVED_VECTOR_KEYS,
            reserved_keys=RESERVED_VECTOR_KEYS,
            metadata_string_bytes=max(self.max_metadata_string_bytes, self.max_document_id_bytes),
            text_chars=max(self.max_chunk_size, self.max_query_bytes),
            records_per_call=self.index_batch_records,
            ids_per_call=max(self.index_batch_records, RECONCILE_PAGE_IDS),
            filter_conditions=self.max_filter_conditions,
            # A delete by filter removes each batch's vectors with one
            # `_inc IN (...)` of up to DELETE_BATCH_DOCUMENTS incarnations.
            filter_values=max(self.max_filter_values, self.delete_batch_documents),
        )

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return _CPUS if self.is_production else 1

    @property
    def effective_db_threads(self) -> int:
        return self.db_threads or self.pool_size
