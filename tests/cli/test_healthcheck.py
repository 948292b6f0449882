"""`python -m askmojo.healthcheck`, the probe compose.yaml's health checks
run, against a real metadata service and a closed port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from askmojo import healthcheck
from metadata_service.server import SERVICE_NAME
from tests.conftest import RunningServer


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def serving_soon(address: str, service: str) -> tuple[bool, str]:
    # The readiness probe publishes SERVING after its first database check.
    deadline = time.monotonic() + 10
    while True:
        serving, line = healthcheck.check(address, service)
        if serving or time.monotonic() > deadline:
            return serving, line
        time.sleep(0.1)


def test_serving_service_exits_0(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert serving_soon(server.address, SERVICE_NAME)[0]
    assert healthcheck.main([server.address, SERVICE_NAME]) == 0
    assert capsys.readouterr().out == f"{server.address} {SERVICE_NAME}: SERVING\n"
    # No service name: the server as a whole.
    assert healthcheck.main([server.address]) == 0


def test_unknown_service_exits_1(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main([server.address, "no.such.Service"]) == 1
    assert capsys.readouterr().out == (
        f"{server.address} no.such.Service: NOT_FOUND: the server does not know this service name\n"
    )


def test_closed_port_exits_1_in_one_line() -> None:
    address = closed_address()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "askmojo.healthcheck", address, SERVICE_NAME],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{address} {SERVICE_NAME}: UNAVAILABLE: ")
    assert time.monotonic() - started < 30  # refused at once, not at the deadline


def test_module_entry_point_against_a_real_server(server: RunningServer) -> None:
    assert serving_soon(server.address, SERVICE_NAME)[0]
    done = subprocess.run(
        [sys.executable, "-m", "askmojo.healthcheck", server.address, SERVICE_NAME],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, f"{server.address} {SERVICE_NAME}: SERVING\n")
