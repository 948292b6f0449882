"""Vector-service fixtures: a real `chroma run` server, a channel to the
session's warm vector service (tests/conftest.py) and the model in this
process to compare its vectors with."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.services import free_port
from tests.conftest import RunningServer, vector_settings
from vector_service.config import packaged_model_path
from vector_service.embedding import worker
from vector_service.store import VectorStore

CHROMA = Path(sys.executable).parent / "chroma"


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real Chroma server (`chroma run`) on a free port."""
    if not CHROMA.exists() and shutil.which("chroma") is None:
        pytest.fail("the chroma CLI (installed with chromadb) is missing: run make test to install")
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(path), "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        wait_for_port(port)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(params=["embedded", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """An open VectorStore on embedded Chroma, then on a `chroma run` server."""
    if request.param == "embedded":
        settings = vector_settings(tmp_path / "chroma")
    else:
        host, port = request.getfixturevalue("chroma_server")
        settings = vector_settings(tmp_path / "unused", chroma_host=host, chroma_port=port)
    opened = VectorStore(settings)
    opened.open()
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def vector_channel(vector_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        vector_server.address,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="session")
def reference_model() -> Any:
    """The model in this process, as a user of sentence-transformers has it:
    loaded once for every module that compares the service's vectors with it."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    return worker.load_model(packaged_model_path())
