"""Starting the service the ways a user does: `make run`'s script, bad
settings, `.env`, structured logs."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from askmojo.common.logs import JsonFormatter
from metadata_service.config import MetadataSettings
from tests.metadata_service.test_workers import start_service, wait_serving

ROOT = Path(__file__).resolve().parents[2]


def test_run_services_starts_and_ctrl_c_stops(tmp_path: Path) -> None:
    """What `make run` runs: embedded defaults under ./data, no vector service
    needed yet, and Ctrl-C ends everything with exit code 0."""
    env = {**os.environ, "METADATA_PORT": "0", "LOG_FORMAT": "json", "METADATA_HOST": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_services.py")],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line)["message"] == "metadata service listening":
                port = json.loads(line)["port"]
                break
        assert port, "the metadata service never listened"
        wait_serving(f"127.0.0.1:{port}")
        assert (tmp_path / "data" / "metadata.db").exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_invalid_settings_exit_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "metadata_service"],
        cwd=tmp_path,
        env={**os.environ, "METADATA_PORT": "not-a-port"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    # One line, naming the variable as it is set, and not echoing the value.
    assert result.stderr.splitlines() == [
        "metadata_service: invalid settings: METADATA_PORT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


def test_settings_read_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=sqlite:///from-dotenv.db\nPOOL_SIZE=9\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("POOL_SIZE", raising=False)
    settings = MetadataSettings()
    assert (settings.database_url, settings.pool_size) == ("sqlite:///from-dotenv.db", 9)
    monkeypatch.setenv("POOL_SIZE", "11")  # the environment wins over .env
    assert MetadataSettings().pool_size == 11


def test_json_logs_carry_structured_fields() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "worker serving", None, None)
    record.port = 50051
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "worker serving" and entry["port"] == 50051
    assert entry["level"] == "info" and "time" in entry and "pid" in entry


def test_production_logs_each_startup_step_as_json(tmp_path: Path) -> None:
    service = start_service(
        {
            "ENVIRONMENT": "production",
            # Production refuses to start without API_KEY otherwise (tests/auth).
            "ALLOW_UNAUTHENTICATED": "true",
            "WORKERS": "2",
            "METADATA_PORT": "0",
            "METADATA_HOST": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        },
        tmp_path,
    )
    try:
        wait_serving(service.address)
    finally:
        assert service.stop() == 0
    messages = [json.loads(line)["message"] for line in service.log if line.startswith("{")]
    for step in (
        "starting metadata service",
        "database engine ready",
        "migrating schema",
        "schema migrated",
        "worker started",
        "metadata service listening",
        "worker serving",
    ):
        assert step in messages, f"start-up step not logged: {step}"
