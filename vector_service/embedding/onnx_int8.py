"""The optional int8 backend (`EMBEDDING_BACKEND=onnx-int8`): the
sentence-transformers model (transformer, pooling, normalisation: its own
modules) exported to ONNX, its weights quantized to int8 per channel, run by
ONNX Runtime on the worker's usual tokenization.

Against the float32 torch model it is faster, most of all on small batches,
at a small cost in recall (scripts/eval_onnx_int8.py; figures in
docs/benchmarks.md). Its vectors are close to the
float32 ones but not the same (cosine ~0.96), so the service names its model
`<name>+onnx-int8`: a collection keeps the vectors of one of the two.

The export runs once per model and versions into MODEL_CACHE_DIR, under a
file lock (every worker starts at once; one exports, the others wait and
load the file), written beside and renamed into place so a crash mid-way
leaves no half file that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

_LOGGER = logging.getLogger(__name__)

BACKEND = "onnx-int8"
# Changes whenever the export or the quantization changes what the file holds.
_RECIPE = "sentence-embedding/opset17/dynamic-int8-per-channel/2"


class UnsupportedModel(Exception):
    """The model is not one this backend reproduces faithfully."""


def served_name(model_name: str) -> str:
    return f"{model_name}+{BACKEND}"


def check_supported(model: Any) -> None:
    """Only a transformer, mean pooling and (optionally) normalisation: what
    this backend computes. Anything else would silently differ."""
    kinds = [type(module).__name__ for module in model]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise UnsupportedModel(
            f"EMBEDDING_BACKEND={BACKEND} supports Transformer + mean Pooling (+ Normalize) "
            f"models; this one is {' + '.join(kinds)}"
        )
    mode = model[1].get_config_dict().get("pooling_mode")
    if mode != "mean":
        raise UnsupportedModel(
            f"EMBEDDING_BACKEND={BACKEND} supports mean pooling; this model pools by {mode!r}"
        )


def cached_export(model: Any, model_path: str, cache_dir: Path) -> Path:
    """The int8 ONNX file for this model, exported and quantized if not
    cached yet."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{Path(model_path.rstrip('/')).name}-{_cache_key(model_path)}.onnx"
    if target.exists():
        return target
    with _locked(cache_dir / ".export.lock"):
        if target.exists():  # another worker exported it while we waited
            return target
        _LOGGER.info("exporting the model to int8 ONNX", extra={"path": str(target)})
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            float_file = Path(scratch) / "float32.onnx"
            int8_file = Path(scratch) / "int8.onnx"
            _export(model, float_file)
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(float_file, int8_file, weight_type=QuantType.QInt8, per_channel=True)
            os.replace(int8_file, target)
    return target


class OnnxInt8Encoder:
    """The model's sentence embeddings from the int8 graph. One session per
    thread count used (interactive batches run on one thread, bulk batches on
    the worker's), each fixed at creation."""

    def __init__(self, onnx_file: Path, threads: int) -> None:
        self._sessions = {n: _session(onnx_file, n) for n in {1, threads}}
        self._inputs = {i.name for i in self._sessions[threads].get_inputs()}

    def encode(self, features: Mapping[str, Any], threads: int) -> np.ndarray:
        """L2-normalised float32 vectors of the texts `features` holds (what
        the model's `tokenize` returned for them)."""
        feed = {k: np.asarray(v, dtype=np.int64) for k, v in features.items() if k in self._inputs}
        (embeddings,) = self._sessions[threads].run(["sentence_embedding"], feed)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return np.ascontiguousarray(embeddings / np.clip(norms, 1e-12, None), dtype=np.float32)


def _session(onnx_file: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle threads sleep instead of spinning: workers share the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def _export(model: Any, path: Path) -> None:
    import torch

    class SentenceEmbedding(torch.nn.Module):
        """The whole model, fed tensors instead of its features dict."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            features = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
            }
            return self.model(features)["sentence_embedding"]

    sample = model.tokenize(["an example", "a longer example text"])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    if "token_type_ids" not in sample:
        sample["token_type_ids"] = torch.zeros_like(sample["input_ids"])
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "tokens"} for name in names}
    axes["sentence_embedding"] = {0: "batch"}
    # The tracer warns about branches on shapes (padding, causal masks) that
    # take the same way for every batch of an encoder; the tests check other
    # batch sizes and lengths than the sample's.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceEmbedding(),
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=["sentence_embedding"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _cache_key(model_path: str) -> str:
    """Changes when the model's files, torch, ONNX Runtime or the recipe do."""
    import onnxruntime
    import torch

    digest = hashlib.sha256(
        f"{_RECIPE}|{torch.__version__}|{onnxruntime.__version__}|{model_path}".encode()
    )
    root = Path(model_path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"|{file.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
