"""What every section shares: the sizes of this run, the thread budget, one
in-process model for the baselines, the services under test, and the
results being collected."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.services import ServiceProcess, free_port
from vector_service.config import VectorSettings, packaged_model_path


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each section does: `full` for `make bench`, `quick` for
    `make bench-quick` and the smoke test.

    `full` takes about 5 minutes on this 2-core VM on a normal day for the
    embedding, pipeline and metadata sections (the security section adds
    about 4, its pairs fixed), so a slow day still ends within 10: on a slow
    machine each section's counts shrink with its measured speed (`scaled`). The pair
    counts (`repeat`) never shrink: they are what keeps a ratio's median
    steady while the machine's speed drifts."""

    repeat: int
    embed_texts: int
    concurrent_texts: int
    ingest_docs: int  # real corpus documents
    search_queries: int
    latency_queries: int
    metadata_docs: int
    scale_small: int  # chunks
    scale_large: int
    metadata_repeat: int
    # The security section's own counts: documents in each pair, Search
    # queries and single-text Embed calls per timed run.
    secured_docs: int
    secured_queries: int
    secured_texts: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(3, 1024, 512, 96, 240, 200, 10000, 4000, 20000, 3, 32, 240, 512)

    @classmethod
    def quick(cls) -> Sizes:
        # A smoke run (`make bench-quick`, tests/bench): every section end to
        # end, its figures only roughly indicative; about half the work of
        # what it used to be, as `make test` runs it.
        return cls(1, 128, 64, 12, 40, 30, 1000, 256, 1024, 1, 6, 40, 64)

    def scaled(self, speed: float) -> Sizes:
        """These sizes for a machine at `speed` (1.0: the one `full` was
        chosen for): every count times `speed` when it is slower, never below
        the quick sizes; never more work on a faster one."""
        if speed >= 1:
            return self
        floor = Sizes.quick()
        counts = {
            f.name: max(getattr(floor, f.name), round(getattr(self, f.name) * speed))
            for f in dataclasses.fields(self)
            if f.name not in ("repeat", "metadata_repeat")
        }
        return dataclasses.replace(self, **counts)


@dataclasses.dataclass
class Ratio:
    key: str
    numerator: float
    numerator_label: str
    denominator: float
    denominator_label: str
    unit: str
    target: float

    @property
    def value(self) -> float:
        return self.numerator / self.denominator if self.denominator else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "value": round(self.value, 3),
            "target": self.target,
            "met": self.value >= self.target,
            "numerator": {"label": self.numerator_label, "value": round(self.numerator, 1)},
            "denominator": {"label": self.denominator_label, "value": round(self.denominator, 1)},
            "unit": self.unit,
        }


class Context:
    def __init__(self, sizes: Sizes, workdir: Path) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.settings = VectorSettings()
        self.ratios: dict[str, Ratio] = {}
        self.measures: dict[str, Any] = {}
        self._vector: ServiceProcess | None = None

    @property
    def thread_budget(self) -> int:
        """The torch threads the service may use; every baseline gets the same."""
        return self.settings.max_workers * self.settings.threads_per_worker

    def ratio(self, ratio: Ratio) -> None:
        self.ratios[ratio.key] = ratio
        print(
            f"  {ratio.key}: {ratio.value:.2f} = {ratio.numerator:.1f} {ratio.unit} "
            f"({ratio.numerator_label}) / {ratio.denominator:.1f} ({ratio.denominator_label})",
            flush=True,
        )

    def measure(self, key: str, value: Any) -> None:
        self.measures[key] = value
        print(f"  {key}: {value}", flush=True)

    def dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))

    # --- the services under test ---------------------------------------------

    def vector_service(self) -> ServiceProcess:
        """One vector service (embedded Chroma, machine defaults) for the run."""
        if self._vector is None:
            persist = self.dir("chroma")
            service = ServiceProcess(
                "vector_service",
                free_port(),
                {"CHROMADB_PERSIST_DIRECTORY": str(persist), "VECTOR_HOST": "127.0.0.1"},
                self.workdir / "vector.log",
            )
            service.env["VECTOR_PORT"] = str(service.port)
            service.start()
            self._vector = service
        return self._vector

    def metadata_service(self, name: str, database: Path, **env: str) -> ServiceProcess:
        """A metadata service on the SQLite file `database`; the caller
        starts and stops it."""
        port = free_port()
        service = ServiceProcess(
            "metadata_service",
            port,
            {
                "DATABASE_URL": f"sqlite:///{database}",
                "METADATA_HOST": "127.0.0.1",
                "METADATA_PORT": str(port),
                "VECTOR_SERVICE_ADDRESS": self._vector.address if self._vector else "",
                **env,
            },
            self.workdir / f"{name}.log",
        )
        return service

    def close(self) -> None:
        if self._vector is not None:
            self._vector.stop()
            self._vector = None


@functools.cache
def baseline_model(threads: int) -> Any:
    """The in-process side: sentence-transformers in this process with the
    service's whole thread budget."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    return SentenceTransformer(packaged_model_path(), device="cpu")
