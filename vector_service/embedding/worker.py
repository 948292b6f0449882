"""Code that runs inside an embedding worker process.

Each worker loads the model once (in the pool initializer) and then embeds
whole batches: one inter-process round trip per batch, never per text, with
the vectors returned as one float32 array.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vector_service.embedding import onnx_int8

_LOGGER = logging.getLogger(__name__)

# The model of this process, set by `initialize`. A module global is the
# one way a ProcessPoolExecutor initializer can hand state to later tasks.
_MODEL: Any = None
# The torch threads this worker runs bulk batches with (interactive: one).
_THREADS = 1
# CPU niceness of this process: as started, and while embedding bulk batches
# (None: it may not lower it again, so it never raises it).
_BASE_NICE = 0
_BULK_NICE: int | None = None
# Set when EMBEDDING_BACKEND=onnx-int8: batches run on it, not on torch.
_ONNX: Any = None


@dataclass(frozen=True)
class ModelShape:
    dimension: int
    max_sequence_length: int


@dataclass(frozen=True)
class BatchResult:
    vectors: np.ndarray  # float32, shape (texts, dimension), L2-normalised
    token_counts: list[int]
    truncated: list[bool]


def initialize(
    model_path: str,
    threads: int,
    bulk_nice: int = 0,
    backend: str = "torch",
    cache_dir: str = "",
) -> None:
    """Pool initializer: offline, pinned thread count, model loaded once
    (and, for the int8 backend, its ONNX graph: onnx_int8.py)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    _exit_with_parent()
    atexit.register(_exit_without_teardown)
    # Ctrl+C reaches the whole process group: the parent stops the pool in
    # order; a worker dying of KeyboardInterrupt first would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    global _MODEL, _THREADS  # noqa: PLW0603 -- the initializer hands state to later tasks this way
    _THREADS = threads
    _allow_bulk_nice(bulk_nice)
    # Inter-op threads only matter for parallel graph branches; one keeps the
    # worker inside its share of the cores.
    torch.set_num_interop_threads(1)
    # The tokenizer warns on every text longer than the window; we report
    # truncation per text instead.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    _MODEL = load_model(model_path)
    if backend == onnx_int8.BACKEND:
        global _ONNX  # noqa: PLW0603 -- as for the model
        onnx_int8.check_supported(_MODEL)
        onnx_file = onnx_int8.cached_export(_MODEL, model_path, Path(cache_dir))
        _ONNX = onnx_int8.OnnxInt8Encoder(onnx_file, threads)


def _allow_bulk_nice(bulk_nice: int) -> None:
    """Bulk batches run at a lower CPU priority so that an interactive batch
    (a search's query on the express worker) gets the cores first. That needs
    the right to raise the priority again afterwards (root with
    CAP_SYS_NICE, or RLIMIT_NICE): tried once here, one step up and back."""
    global _BASE_NICE, _BULK_NICE  # noqa: PLW0603 -- per-process state, like the model
    if bulk_nice <= 0:
        return
    _BASE_NICE = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, _BASE_NICE + 1)
        os.setpriority(os.PRIO_PROCESS, 0, _BASE_NICE)
    except PermissionError:
        _LOGGER.warning(
            "BULK_NICE needs CAP_SYS_NICE or RLIMIT_NICE; bulk and interactive batches "
            "share the cores at one priority"
        )
        return
    _BULK_NICE = min(19, _BASE_NICE + bulk_nice)


def _set_nice(interactive: bool) -> None:
    if _BULK_NICE is None:
        return
    wanted = _BASE_NICE if interactive else _BULK_NICE
    if os.getpriority(os.PRIO_PROCESS, 0) != wanted:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)


def _exit_with_parent() -> None:
    """A worker must not outlive its service, even one killed with SIGKILL
    (which gives it no chance to stop us): once our parent is gone we are
    re-parented, and we leave."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _exit_without_teardown() -> None:
    """Registered after multiprocessing's own exit hook, so it runs first
    once the pool has told this worker to stop and its results are all
    written (the result queue is written synchronously): it ends the process
    there. Tearing down the interpreter (collecting the model's and torch's
    objects, module by module) took the workers 3 s and more at every pool
    shutdown, time a service stop or a pool rebuild spent waiting (and
    sometimes killing). Nothing is left to release: the OS frees the
    memory. Only a clean exit gets here; a crash has its own exit status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(0)


def load_model(model_path: str) -> Any:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu", local_files_only=True)
    model.eval()
    return model


def model_shape() -> ModelShape:
    model = _require_model()
    return ModelShape(
        dimension=int(model.get_embedding_dimension()),
        max_sequence_length=int(model.max_seq_length),
    )


def ping(linger: float = 0.0) -> int:
    """A cheap task proving the worker is alive and its model loaded. Lingering
    a moment lets the other workers take the next pings, so a warm-up can see
    every worker."""
    _require_model()
    time.sleep(linger)
    return os.getpid()


def embed(texts: list[str], interactive: bool = False) -> BatchResult:
    """The batch in one forward pass: tokenized once (padded to its longest
    text), pooled and L2-normalised by the model's own modules — exactly what
    `SentenceTransformer.encode` computes for these texts. An interactive
    batch (small, someone waiting, maybe beside bulk batches) runs with one
    torch thread at full priority; a bulk batch with the worker's threads at
    BULK_NICE."""
    model = _require_model()
    wanted = 1 if interactive else _THREADS
    _set_nice(interactive)
    window = int(model.max_seq_length)
    features = model.tokenize(texts)  # truncates to the window
    seen = [int(c) for c in features["attention_mask"].sum(dim=1).tolist()]
    if _ONNX is not None:
        vectors = _ONNX.encode(features, wanted)
    else:
        vectors = _torch_encode(model, features, wanted)
    return BatchResult(
        vectors=vectors,
        token_counts=seen,
        truncated=_truncated(model, texts, seen, window),
    )


def _torch_encode(model: Any, features: dict[str, Any], threads: int) -> np.ndarray:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        output = model(features)
    vectors = torch.nn.functional.normalize(output["sentence_embedding"], p=2, dim=1)
    return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)


def _truncated(model: Any, texts: list[str], seen: list[int], window: int) -> list[bool]:
    """Which texts lost tokens to the window. A WordPiece token covers at least
    one character, so only texts that filled the window and are longer than
    it in characters need their untruncated length counted."""
    flags = [False] * len(texts)
    suspects = [
        i
        for i, (t, n) in enumerate(zip(texts, seen, strict=True))
        if n >= window and len(t) > window - 2
    ]
    if suspects:
        full = model.tokenizer([texts[i] for i in suspects], add_special_tokens=True)["input_ids"]
        for i, ids in zip(suspects, full, strict=True):
            flags[i] = len(ids) > window
    return flags


def _require_model() -> Any:
    if _MODEL is None:
        raise RuntimeError("embedding worker used before its model was loaded")
    return _MODEL
