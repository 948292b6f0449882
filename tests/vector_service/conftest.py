"""Vector-service fixtures: a real `chroma run` server, and one warm vector
service (the embedding pool takes ~10 s to load the model) shared by the
session's tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import RunningServer
from vector_service.config import VectorSettings
from vector_service.server import create_server

CHROMA = Path(sys.executable).parent / "chroma"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def vector_settings(persist: Path, **overrides: object) -> VectorSettings:
    values: dict[str, object] = {
        "chromadb_persist_directory": str(persist),
        "vector_port": 0,
        "vector_host": "127.0.0.1",
        "max_workers": 1,
        "max_message_bytes": 4 * 1024 * 1024,
        "max_queued_texts": 700,
        **overrides,
    }
    return VectorSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def vector_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = vector_settings(tmp_path_factory.mktemp("vector") / "chroma")
    with RunningServer(lambda: create_server(settings), settings) as running:
        yield running


@pytest.fixture(scope="session")
def vector_channel(vector_server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        vector_server.address,
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel
