"""The README's API-key walk-through, run verbatim by bash (the lines use
`$ASKMOJO_API_KEY`) against a metadata service with API_KEY set, so the
documented header, the open health check and the CLI's key variable stay true."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer
from tests.metadata_service.test_grpcurl import README_ADDRESS

ROOT = Path(__file__).resolve().parents[2]
KEY = "readme-walkthrough-key-0123456789"


def keys_walkthrough() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- keys-walkthrough:start -->(.*?)<!-- keys-walkthrough:end -->", readme, re.S
    )
    assert block, "README.md lost its keys walk-through markers"
    lines = [line for line in block.group(1).splitlines() if line.startswith(".venv/bin/")]
    assert len(lines) >= 4
    return lines


@pytest.fixture
def keyed(paired_settings: MetadataSettings) -> Iterator[RunningServer]:
    settings = paired_settings.model_copy(update={"api_key": SecretStr(KEY)})
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield running


def test_readme_keys_walkthrough_runs_verbatim(keyed: RunningServer) -> None:
    env = {**os.environ, "ASKMOJO_API_KEY": KEY, "METADATA_ADDRESS": keyed.address}
    runs = []
    for line in keys_walkthrough():
        done = subprocess.run(
            ["bash", "-c", line.replace(README_ADDRESS, keyed.address)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        runs.append(done)
    unauthenticated, health, listing, stats, collections = runs
    assert "Unauthenticated" in unauthenticated.stderr
    assert "authorization: Bearer" in unauthenticated.stderr  # says what to send
    assert KEY not in unauthenticated.stderr
    assert health.stdout.strip().endswith("SERVING")
    assert "askmojo.metadata.v1.MetadataService" in listing.stdout
    assert stats.stdout.strip().startswith("{")
    assert "Unauthenticated" not in collections.stderr
