"""API key settings: what is refused at start-up, and why, without ever
printing a key; production without API_KEY refuses to start in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from askmojo.common import auth
from metadata_service.config import MetadataSettings
from vector_service.config import VectorSettings

SECRET = "s3cret-part-of-a-key"


def metadata(**values: object) -> MetadataSettings:
    return MetadataSettings(_env_file=None, **values)  # type: ignore[arg-type]


def vector(**values: object) -> VectorSettings:
    return VectorSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("api_key", "", "API_KEY is empty"),
        ("api_key", "   ", "API_KEY is empty"),
        ("api_key", f"{SECRET} tail", "API_KEY must be printable ASCII without spaces"),
        ("api_key", f"{SECRET}\n", "API_KEY must be printable ASCII without spaces"),
        ("api_key", f"{SECRET}é", "API_KEY must be printable ASCII without spaces"),
        ("read_only_api_key", " ", "READ_ONLY_API_KEY is empty"),
        ("vector_service_api_key", "\t", "VECTOR_SERVICE_API_KEY is empty"),
        ("vector_service_api_key", f" {SECRET}", "VECTOR_SERVICE_API_KEY must be printable"),
    ],
)
def test_unusable_keys_are_refused_without_echoing_them(
    field: str, value: str, reason: str
) -> None:
    extra = {"api_key": "full-key-for-the-read-key"} if field == "read_only_api_key" else {}
    with pytest.raises(ValidationError) as refused:
        metadata(**{field: value}, **extra)
    assert reason in str(refused.value)
    assert SECRET not in str(refused.value)


def test_read_only_key_needs_a_full_key_of_its_own() -> None:
    with pytest.raises(ValidationError) as alone:
        vector(read_only_api_key=SECRET)
    assert "READ_ONLY_API_KEY is set without API_KEY" in str(alone.value)
    with pytest.raises(ValidationError) as same:
        metadata(api_key=SECRET, read_only_api_key=SECRET)
    assert "READ_ONLY_API_KEY equals API_KEY" in str(same.value)
    # Any other refusal hides every value too (a model-level error would
    # otherwise print the whole input, keys included).
    with pytest.raises(ValidationError) as other:
        metadata(api_key=SECRET, max_message_bytes=1)
    assert SECRET not in str(other.value)


def test_the_vector_service_key_falls_back_to_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert metadata(api_key="pair-key").vector_service_key.get_secret_value() == "pair-key"  # type: ignore[union-attr]
    own = metadata(api_key="pair-key", vector_service_api_key="vector-key")
    assert own.vector_service_key.get_secret_value() == "vector-key"  # type: ignore[union-attr]
    # One `.env` for the pair; a service's own prefixed name wins.
    monkeypatch.setenv("API_KEY", "pair-key")
    monkeypatch.setenv("VECTOR_API_KEY", "vector-only-key")
    assert vector().api_key.get_secret_value() == "vector-only-key"  # type: ignore[union-attr]
    assert metadata().api_key.get_secret_value() == "pair-key"  # type: ignore[union-attr]


def test_startup_refusal_only_in_production_without_a_key() -> None:
    assert auth.startup_refusal(metadata()) is None  # development: open
    refusal = auth.startup_refusal(vector(environment="production"))
    assert refusal is not None and "\n" not in refusal
    assert "API_KEY" in refusal and "ALLOW_UNAUTHENTICATED=true" in refusal
    assert auth.startup_refusal(vector(environment="production", api_key=SECRET)) is None
    allowed = vector(environment="production", allow_unauthenticated=True)
    assert auth.startup_refusal(allowed) is None
    assert auth.server_interceptors(allowed) == []
    # ALLOW_UNAUTHENTICATED only lifts the refusal: keys set are enforced.
    keyed = metadata(environment="production", allow_unauthenticated=True, api_key=SECRET)
    assert len(auth.server_interceptors(keyed)) == 1


def run_service(module: str, tmp_path: Path, **settings: str) -> tuple[int, str]:
    # Neither the developer's keys nor their `.env` (cwd is empty).
    env = {k: v for k, v in os.environ.items() if not k.endswith("API_KEY")}
    env.pop("ALLOW_UNAUTHENTICATED", None)
    env.update(settings)
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize("module", ["metadata_service", "vector_service"])
def test_production_without_api_key_exits_2_with_one_line(module: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    code, stderr = run_service(
        module,
        tmp_path,
        ENVIRONMENT="production",
        DATABASE_URL=f"sqlite:///{store / 'metadata.db'}",
        CHROMADB_PERSIST_DIRECTORY=str(store / "chroma"),
        METADATA_PORT="0",
        VECTOR_PORT="0",
    )
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    refusal = f"{module}: refusing to start: ENVIRONMENT=production and no API_KEY"
    assert lines[0].startswith(refusal)
    assert "ALLOW_UNAUTHENTICATED=true" in lines[0]
    # Before anything was opened: no database, no vector store, no model.
    assert not store.exists()


def test_a_bad_key_stops_the_service_before_it_starts(tmp_path: Path) -> None:
    code, stderr = run_service(
        "vector_service", tmp_path, API_KEY=f"{SECRET} with a space", VECTOR_PORT="0"
    )
    assert code == 2
    assert "invalid settings" in stderr and "API_KEY must be printable ASCII" in stderr
    assert SECRET not in stderr and "Traceback" not in stderr
