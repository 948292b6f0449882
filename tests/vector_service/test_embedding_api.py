"""EmbeddingService over a real socket with the real model in a real pool."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from askmojo.vector.v1 import embedding_service_pb2 as epb
from askmojo.vector.v1 import embedding_service_pb2_grpc as epb_grpc
from tests.conftest import RunningServer

TEXTS = [
    "SQLite in WAL mode lets readers and a writer work at the same time.",
    "gRPC streams carry batches in both directions.",
    "The quick brown fox jumps over the lazy dog.",
    "Chroma keeps vectors in an HNSW index.",
]


@pytest.fixture(scope="module")
def embed_stub(vector_channel: grpc.Channel) -> epb_grpc.EmbeddingServiceStub:
    return epb_grpc.EmbeddingServiceStub(vector_channel)


@pytest.fixture(scope="module")
def reference(reference_model: Any) -> Any:
    """The model in this process, as a user of sentence-transformers has it."""
    return reference_model


def vectors(response: Any) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def rpc_code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()  # type: ignore[attr-defined]


def test_vectors_are_what_sentence_transformers_gives(
    embed_stub: epb_grpc.EmbeddingServiceStub, reference: Any
) -> None:
    response = embed_stub.Embed(epb.EmbedRequest(texts=TEXTS))
    assert (response.model, response.dimension) == ("all-MiniLM-L6-v2", 384)
    got = vectors(response)
    assert got.shape == (4, 384)
    expected = reference.encode(TEXTS, convert_to_numpy=True)
    assert cosines(got, expected).min() >= 0.9999
    assert all(0 < e.token_count < 40 and not e.truncated for e in response.embeddings)


def test_long_text_is_truncated_and_says_so(embed_stub: epb_grpc.EmbeddingServiceStub) -> None:
    response = embed_stub.Embed(epb.EmbedRequest(texts=["word " * 600, "short"]))
    long, short = response.embeddings
    assert (long.truncated, long.token_count) == (True, 256)
    assert (short.truncated, short.token_count) == (False, 3)


def test_sixteen_concurrent_single_texts_equal_one_batch(
    embed_stub: epb_grpc.EmbeddingServiceStub, vector_server: RunningServer
) -> None:
    texts = [f"{TEXTS[i % 4]} Variant {i}." for i in range(16)]
    batched = vectors(embed_stub.Embed(epb.EmbedRequest(texts=texts)))
    before = vector_server.server.batcher.stats.batches
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        singles = list(pool.map(lambda t: embed_stub.Embed(epb.EmbedRequest(texts=[t])), texts))
    single = np.concatenate([vectors(r) for r in singles])
    assert cosines(single, batched).min() >= 0.9999
    # Coalesced: far fewer model batches than calls.
    assert vector_server.server.batcher.stats.batches - before < 16


def test_stream_keeps_order_and_survives_bad_batches(
    embed_stub: epb_grpc.EmbeddingServiceStub,
) -> None:
    requests = [
        epb.EmbedStreamRequest(texts=TEXTS[:2], batch_id="one"),
        epb.EmbedStreamRequest(texts=[], batch_id="empty"),
        epb.EmbedStreamRequest(texts=["x" * 40000], batch_id="too-long"),
        epb.EmbedStreamRequest(texts=TEXTS[2:], batch_id="two"),
    ]
    responses = list(embed_stub.EmbedStream(iter(requests), timeout=120))
    assert [(r.batch_id, r.status.code) for r in responses] == [
        ("one", code_pb2.OK),
        ("empty", code_pb2.INVALID_ARGUMENT),
        ("too-long", code_pb2.OK),  # processed; its one text failed alone
        ("two", code_pb2.OK),
    ]
    too_long = responses[2].embeddings[0]
    assert too_long.status.code == code_pb2.INVALID_ARGUMENT and not too_long.values
    assert "MAX_TEXT_LENGTH" in too_long.status.message
    whole = vectors(embed_stub.Embed(epb.EmbedRequest(texts=TEXTS)))
    streamed = np.concatenate([vectors(responses[0]), vectors(responses[3])])
    assert cosines(streamed, whole).min() >= 0.9999


def test_a_bad_text_fails_alone_in_its_stream_batch(
    embed_stub: epb_grpc.EmbeddingServiceStub,
) -> None:
    """One over-long and one empty text among good ones: each gets its own
    status, the good ones their embeddings, and the stream goes on."""
    batch = [TEXTS[0], "x" * 40000, TEXTS[1], "", TEXTS[2]]
    requests = [
        epb.EmbedStreamRequest(texts=batch, batch_id="mixed"),
        epb.EmbedStreamRequest(texts=[TEXTS[3]], batch_id="next"),
    ]
    mixed, after = list(embed_stub.EmbedStream(iter(requests), timeout=120))
    assert (mixed.batch_id, mixed.status.code, mixed.dimension) == ("mixed", code_pb2.OK, 384)
    assert [e.status.code for e in mixed.embeddings] == [
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
        code_pb2.INVALID_ARGUMENT,
        code_pb2.OK,
    ]
    assert "texts[1]" in mixed.embeddings[1].status.message
    assert "MAX_TEXT_LENGTH" in mixed.embeddings[1].status.message
    assert "texts[3]" in mixed.embeddings[3].status.message
    assert "empty" in mixed.embeddings[3].status.message
    assert [len(e.values) for e in mixed.embeddings] == [384, 0, 384, 0, 384]
    good = np.array([list(mixed.embeddings[i].values) for i in (0, 2, 4)], dtype=np.float32)
    alone = vectors(embed_stub.Embed(epb.EmbedRequest(texts=[TEXTS[0], TEXTS[1], TEXTS[2]])))
    assert cosines(good, alone).min() >= 0.9999
    assert (after.batch_id, after.status.code, len(after.embeddings)) == ("next", code_pb2.OK, 1)
    assert after.embeddings[0].status.code == code_pb2.OK
    # A unary Embed still fails the call, naming the text.
    code, message = rpc_code(lambda: embed_stub.Embed(epb.EmbedRequest(texts=batch)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "texts[1]" in message


def test_model_info(embed_stub: epb_grpc.EmbeddingServiceStub) -> None:
    info = embed_stub.GetModelInfo(epb.GetModelInfoRequest())
    assert (info.model, info.dimension, info.max_sequence_length) == ("all-MiniLM-L6-v2", 384, 256)
    assert info.max_texts_per_call == 512 and info.workers == 1
    assert info.max_ids_per_call == 1000  # the metadata service checks it at first contact


def test_bad_input(embed_stub: epb_grpc.EmbeddingServiceStub) -> None:
    code, message = rpc_code(lambda: embed_stub.Embed(epb.EmbedRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at least one text" in message
    code, message = rpc_code(lambda: embed_stub.Embed(epb.EmbedRequest(texts=["a"] * 513)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "MAX_TEXTS_PER_CALL" in message
    code, message = rpc_code(lambda: embed_stub.Embed(epb.EmbedRequest(texts=["a" * 32769])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "texts[0]" in message
    code, message = rpc_code(lambda: embed_stub.Embed(epb.EmbedRequest(texts=["a" * 30000] * 150)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_full_queue_refuses_unary_calls_at_once(
    embed_stub: epb_grpc.EmbeddingServiceStub,
) -> None:
    # The test server queues at most 700 texts: four 500-text calls at once
    # cannot all fit; the ones that do not are refused, not left waiting.
    texts = [f"sentence number {i}" for i in range(500)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(embed_stub.Embed, epb.EmbedRequest(texts=texts), timeout=120)
            for _ in range(4)
        ]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(len(future.result().embeddings))
            except grpc.RpcError as exc:
                outcomes.append(exc.code())  # type: ignore[attr-defined]
    assert 500 in outcomes
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in outcomes
    assert set(outcomes) <= {500, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_health_and_reflection_services(vector_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(vector_channel)
    for service in ("", "askmojo.vector.v1.EmbeddingService", "askmojo.vector.v1.VectorService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    database = ProtoReflectionDescriptorDatabase(vector_channel)
    assert set(database.get_services()) >= {
        "askmojo.vector.v1.EmbeddingService",
        "askmojo.vector.v1.VectorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    # Enough for a client holding no .proto file (grpcurl) to build requests.
    pool = descriptor_pool.DescriptorPool(database)
    service = pool.FindServiceByName("askmojo.vector.v1.EmbeddingService")
    method = service.methods_by_name["Embed"]
    assert method.input_type.full_name == "askmojo.vector.v1.EmbedRequest"


def _wait_for_health(
    health: health_pb2_grpc.HealthStub, expected: int, timeout: float = 120
) -> bool:
    request = health_pb2.HealthCheckRequest(service="askmojo.vector.v1.EmbeddingService")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health.Check(request).status == expected:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_worker_dying_while_idle_turns_health_not_serving(
    embed_stub: epb_grpc.EmbeddingServiceStub,
    vector_server: RunningServer,
    vector_channel: grpc.Channel,
) -> None:
    """No call is running, so no call notices: the probe must."""
    pool = vector_server.server.pool
    victim = pool.worker_pids()[0]
    rebuilds = pool.rebuilds
    health = health_pb2_grpc.HealthStub(vector_channel)
    os.kill(victim, signal.SIGKILL)
    assert _wait_for_health(health, health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)
    assert _wait_for_health(health, health_pb2.HealthCheckResponse.SERVING)
    assert pool.rebuilds == rebuilds + 1 and victim not in pool.worker_pids()
    assert len(embed_stub.Embed(epb.EmbedRequest(texts=TEXTS), timeout=30).embeddings) == len(TEXTS)


def test_killed_worker_is_replaced(
    embed_stub: epb_grpc.EmbeddingServiceStub,
    vector_server: RunningServer,
    vector_channel: grpc.Channel,
) -> None:
    pool = vector_server.server.pool
    victims = pool.worker_pids()
    assert victims
    outcomes: list[Any] = []
    stop = time.monotonic() + 3.0

    def loop() -> None:
        while time.monotonic() < stop:
            try:
                embed_stub.Embed(epb.EmbedRequest(texts=TEXTS * 16), timeout=60)
                outcomes.append("ok")
            except grpc.RpcError as exc:
                outcomes.append(exc.code())  # type: ignore[attr-defined]

    rebuilds_before = pool.rebuilds
    health_seen: set[int] = set()
    request = health_pb2.HealthCheckRequest(service="askmojo.vector.v1.EmbeddingService")
    health_stub = health_pb2_grpc.HealthStub(vector_channel)

    def watch_health() -> None:
        while pool.rebuilds == rebuilds_before and time.monotonic() < stop + 120:
            health_seen.add(health_stub.Check(request).status)
            time.sleep(0.1)

    with concurrent.futures.ThreadPoolExecutor(5) as threads:
        futures = [threads.submit(loop) for _ in range(4)]
        watcher = threads.submit(watch_health)
        time.sleep(1.0)
        os.kill(victims[0], signal.SIGKILL)
        for future in futures:
            future.result(timeout=90)  # no call hangs
        watcher.result(timeout=150)
    # The rebuild loads the model again (seconds): the probe reported it.
    assert health_pb2.HealthCheckResponse.NOT_SERVING in health_seen
    assert set(outcomes) <= {"ok", grpc.StatusCode.UNAVAILABLE}
    assert grpc.StatusCode.UNAVAILABLE in outcomes

    health = health_pb2_grpc.HealthStub(vector_channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            embed_stub.Embed(epb.EmbedRequest(texts=TEXTS), timeout=30)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            time.sleep(0.5)
    else:
        raise AssertionError("the pool never came back")
    assert pool.rebuilds == rebuilds_before + 1
    assert victims[0] not in pool.worker_pids()
    # Health reports SERVING again once the probe has seen the new pool.
    time.sleep(1.5)
    reply = health.Check(
        health_pb2.HealthCheckRequest(service="askmojo.vector.v1.EmbeddingService")
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
