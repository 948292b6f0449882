"""EMBEDDING_BACKEND=onnx-int8: the real export of the packaged model, its
vectors against the float32 torch model's, and a real vector service that
serves it under its own model name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2

from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from askmojo.vector.v1 import vector_service_pb2 as vpb
from askmojo.vector.v1 import vector_service_pb2_grpc as vpb_grpc
from tests.conftest import RunningServer, vector_settings
from vector_service.config import packaged_model_path
from vector_service.embedding import onnx_int8
from vector_service.server import create_server

TEXTS = [
    "SQLite in WAL mode lets readers and a writer work at the same time.",
    "gRPC streams carry batches in both directions.",
    "The quick brown fox jumps over the lazy dog.",
    "Chroma keeps vectors in an HNSW index.",
    "short",
    "A longer passage about retrieval: documents are chunked, every chunk is embedded, "
    "and a query's nearest chunks answer it, joined with their documents' metadata.",
]


@pytest.fixture(scope="module")
def model(reference_model: Any) -> Any:
    return reference_model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def onnx_file(model: Any, cache_dir: Path) -> Path:
    return onnx_int8.cached_export(model, packaged_model_path(), cache_dir)


def test_int8_vectors_stay_close_to_the_float32_model(model: Any, onnx_file: Path) -> None:
    encoder = onnx_int8.OnnxInt8Encoder(onnx_file, threads=2)
    expected = model.encode(TEXTS, normalize_embeddings=True)
    for threads in (1, 2):
        vectors = encoder.encode(model.tokenize(TEXTS), threads)
        assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(vectors * expected, axis=1)
        assert cosines.min() > 0.85 and cosines.mean() > 0.93, cosines


def test_the_export_is_made_once_and_kept(model: Any, onnx_file: Path, cache_dir: Path) -> None:
    made = onnx_file.stat().st_mtime_ns
    assert onnx_int8.cached_export(model, packaged_model_path(), cache_dir) == onnx_file
    assert onnx_file.stat().st_mtime_ns == made
    # Nothing half-written is left beside it.
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([onnx_file.name, ".export.lock"])


class Transformer:
    pass


class Pooling:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def get_config_dict(self) -> dict[str, str]:
        return {"pooling_mode": self.mode}


class Dense:
    pass


def test_a_model_this_backend_would_get_wrong_is_refused(model: Any) -> None:
    onnx_int8.check_supported(model)  # Transformer + mean Pooling + Normalize
    with pytest.raises(onnx_int8.UnsupportedModel, match="pools by 'cls'"):
        onnx_int8.check_supported([Transformer(), Pooling("cls")])
    with pytest.raises(onnx_int8.UnsupportedModel, match="Transformer \\+ Pooling \\+ Dense"):
        onnx_int8.check_supported([Transformer(), Pooling("mean"), Dense()])


def test_an_unknown_backend_is_a_clear_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedding_backend"):
        vector_settings(tmp_path, embedding_backend="tensorrt")


def test_the_service_serves_int8_vectors_under_their_own_name(
    tmp_path: Path, model: Any, cache_dir: Path
) -> None:
    # One worker process to load the model and its int8 graph into, not two
    # (the express lane is the same worker code).
    settings = vector_settings(
        tmp_path / "chroma",
        embedding_backend="onnx-int8",
        model_cache_dir=str(cache_dir),
        express_workers=0,
    )
    with (
        RunningServer(lambda: create_server(settings), settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        embed = epb_grpc.EmbeddingServiceStub(channel)
        response = embed.Embed(epb.EmbedRequest(texts=TEXTS))
        assert response.model == "all-MiniLM-L6-v2+onnx-int8"
        got = np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
        expected = model.encode(TEXTS, normalize_embeddings=True)
        assert np.sum(got * expected, axis=1).mean() > 0.93
        expected_tokens = model.tokenize(TEXTS)["attention_mask"].sum(dim=1).tolist()
        assert [e.token_count for e in response.embeddings] == expected_tokens
        # A collection of the float32 model's vectors takes no int8 ones.
        vectors = vpb_grpc.VectorServiceStub(channel)
        vectors.EnsureCollection(
            vpb.EnsureCollectionRequest(name="float32", model="all-MiniLM-L6-v2")
        )
        result = vectors.Upsert(
            vpb.UpsertRequest(
                collection="float32", records=[vpb.VectorRecord(id="a", text="some text")]
            )
        ).results[0]
        assert result.status.code == code_pb2.FAILED_PRECONDITION
        assert "embeds with all-MiniLM-L6-v2+onnx-int8" in result.status.message
