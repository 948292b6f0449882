"""METADATA_ADDRESS with several metadata replicas: the CLI and the health
probe parse it as the SDK does (askmojo.common.targets). A real metadata
service beside a port nobody listens on: every call answers."""

from __future__ import annotations

import socket

import pytest

from askmojo import healthcheck
from metadata_service.server import SERVICE_NAME
from tests.cli.conftest import Runner
from tests.conftest import RunningServer
from tests.waiting import wait_until


def closed_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_cli_calls_over_two_addresses_with_one_dead(
    server: RunningServer, run_cli: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = closed_address()
    for addresses in (f"{dead},{server.address}", f"{server.address},{dead}"):
        outcome = run_cli("--address", addresses, "collections", "--timeout", "10")
        assert outcome.code == 0, outcome.err
        created = run_cli("--address", addresses, "stats")
        assert created.code == 0, created.err
    # The same through METADATA_ADDRESS.
    monkeypatch.setenv("METADATA_ADDRESS", f" {dead} , {server.address} ")
    for _ in range(4):  # round robin: each call may pick either address
        outcome = run_cli("collections")
        assert outcome.code == 0, outcome.err


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:1,,127.0.0.1:2", "entry 2 of 3 is empty"),
        ("10.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:70000", "port 70000 is not between 1 and 65535"),
        ("127.0.0.1:1,metadata", "expected HOST:PORT"),
    ],
)
def test_a_malformed_address_list_is_a_one_line_usage_error(
    run_cli: Runner, monkeypatch: pytest.MonkeyPatch, address: str, problem: str
) -> None:
    outcome = run_cli("--address", address, "collections")
    assert outcome.code == 2
    assert len(outcome.err.strip().splitlines()) == 1, outcome.err
    assert "METADATA_ADDRESS" in outcome.err and problem in outcome.err
    monkeypatch.setenv("METADATA_ADDRESS", address)
    assert run_cli("collections").code == 2


def test_healthcheck_checks_every_listed_address(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The readiness probe publishes SERVING after its first database check.
    wait_until(lambda: healthcheck.check(server.address, SERVICE_NAME)[0], what="SERVING")
    both = f"{server.address},{server.address}"
    assert healthcheck.main([both, SERVICE_NAME]) == 0
    line = f"{server.address} {SERVICE_NAME}: SERVING"
    assert capsys.readouterr().out == f"{line}; {line}\n"
    dead = closed_address()
    assert healthcheck.main([f"{server.address},{dead}", SERVICE_NAME, "--timeout", "1"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{line}; {dead} {SERVICE_NAME}: ") and out.count("\n") == 1
    assert healthcheck.main(["127.0.0.1:1,,127.0.0.1:2"]) == 2
    err = capsys.readouterr().err
    assert "entry 2 of 3 is empty" in err and err.count("\n") == 1
