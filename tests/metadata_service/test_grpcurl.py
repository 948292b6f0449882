"""Real grpcurl against a real server: reflection, health, JSON requests.
(The README's walk-through runs in tests/pipeline/test_readme.py, against
both services.)"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from metadata_service.config import MetadataSettings
from metadata_service.server import prepare_database
from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parents[2]
GRPCURL = Path(sys.executable).parent / "grpcurl"
README_ADDRESS = "localhost:50051"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), *args], check=False, capture_output=True, text=True, timeout=60
    )


def walkthrough_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", readme, re.S)
    assert block, "README.md lost its walk-through markers"
    commands = [
        shlex.split(line)
        for line in block.group(1).splitlines()
        if line.startswith(".venv/bin/grpcurl ")
    ]
    assert len(commands) >= 5
    return commands


def test_grpcurl_lists_services_and_calls_from_json(server: RunningServer) -> None:
    listed = grpcurl("-plaintext", server.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "askmojo.metadata.v1.MetadataService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    created = grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"name": "from-json", "chunking": {"chunk_size": 300}}),
        server.address,
        "askmojo.metadata.v1.MetadataService/CreateCollection",
    )
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["chunking"]["chunk_size"] == 300
    listed_docs = grpcurl(
        "-plaintext",
        "-d",
        json.dumps({"collection": "from-json", "states": ["DOCUMENT_STATE_PENDING"]}),
        server.address,
        "askmojo.metadata.v1.MetadataService/ListDocuments",
    )
    assert listed_docs.returncode == 0, listed_docs.stderr
    assert json.loads(listed_docs.stdout) == {}
    missing = grpcurl(
        "-plaintext",
        "-d",
        '{"collection": "nope"}',
        server.address,
        "askmojo.metadata.v1.MetadataService/ListDocuments",
    )
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr and "collection 'nope' not found" in missing.stderr


def test_reflection_can_be_turned_off(settings: MetadataSettings) -> None:
    quiet = settings.model_copy(update={"reflection": False})
    prepare_database(quiet)
    with RunningServer.metadata(quiet) as server:
        result = grpcurl("-plaintext", server.address, "list")
    assert result.returncode != 0
    assert "does not support the reflection API" in result.stderr


def test_grpcurl_with_api_keys(settings: MetadataSettings) -> None:
    """With keys set, reflection and calls need a key, sent as grpcurl's
    `-H "authorization: Bearer <key>"` (or `-H "api-key: <key>"`); the
    read-only key lists and reads but cannot write. (Health stays open:
    tests/auth; grpcurl itself needs reflection to call it.)"""
    full, read_only = "grpcurl-full-key-7d1e", "grpcurl-read-key-2c9a"
    keyed = settings.model_copy(
        update={"api_key": SecretStr(full), "read_only_api_key": SecretStr(read_only)}
    )
    prepare_database(keyed)
    with RunningServer.metadata(keyed) as server:
        refused = grpcurl("-plaintext", server.address, "list")
        assert refused.returncode != 0
        assert "Unauthenticated" in refused.stderr
        assert "authorization: Bearer <key>" in refused.stderr

        for header in (f"authorization: Bearer {full}", f"api-key: {read_only}"):
            listed = grpcurl("-plaintext", "-H", header, server.address, "list")
            assert listed.returncode == 0, listed.stderr
            assert "askmojo.metadata.v1.MetadataService" in listed.stdout.split()

        method = "askmojo.metadata.v1.MetadataService/CreateCollection"
        create = ["-d", '{"name": "keyed"}', server.address, method]
        as_reader = grpcurl("-plaintext", "-H", f"authorization: Bearer {read_only}", *create)
        assert as_reader.returncode != 0
        assert "PermissionDenied" in as_reader.stderr and method in as_reader.stderr
        created = grpcurl("-plaintext", "-H", f"authorization: Bearer {full}", *create)
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["name"] == "keyed"
        stats = grpcurl(
            "-plaintext",
            "-H",
            f"authorization: Bearer {read_only}",
            server.address,
            "askmojo.metadata.v1.MetadataService/ListCollections",
        )
        assert stats.returncode == 0, stats.stderr
        assert [c["name"] for c in json.loads(stats.stdout)["collections"]] == ["keyed"]


@pytest.fixture(autouse=True)
def _need_grpcurl() -> None:
    if not GRPCURL.exists():
        pytest.fail(f"grpcurl missing at {GRPCURL}: run `make test` (it installs the dev extras)")
