"""Found by the crash soak (scaled shape): a metadata replica started while
PostgreSQL's backends were being terminated exited at its migration step
('server closed the connection unexpectedly'). prepare_database now retries a
dropped or refused connection a few times; a mistake in a statement still
fails at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from metadata_service import server
from tests.conftest import metadata_settings


def _dropped() -> OperationalError:
    orig = Exception("consuming input failed: server closed the connection unexpectedly")
    return OperationalError("select current_schema()", None, orig)


def test_a_connection_dropped_while_migrating_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    real = server.migrations.upgrade

    def flaky(engine: Any) -> None:
        calls.append(engine)
        if len(calls) < 3:
            raise _dropped()
        real(engine)

    monkeypatch.setattr(server.migrations, "upgrade", flaky)
    monkeypatch.setattr(server, "PREPARE_PAUSE_SECONDS", 0.0)
    server.prepare_database(metadata_settings(tmp_path / "m.db"))
    assert len(calls) == 3  # and the schema is there: the third attempt migrated
    monkeypatch.setattr(server.migrations, "upgrade", real)
    server.prepare_database(metadata_settings(tmp_path / "m.db"))


def test_it_gives_up_after_a_few_attempts_and_never_retries_a_bad_statement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    def down(engine: Any) -> None:
        calls.append(engine)
        raise _dropped()

    monkeypatch.setattr(server.migrations, "upgrade", down)
    monkeypatch.setattr(server, "PREPARE_PAUSE_SECONDS", 0.0)
    with pytest.raises(OperationalError):
        server.prepare_database(metadata_settings(tmp_path / "m.db"))
    assert len(calls) == server.PREPARE_ATTEMPTS

    calls.clear()

    def mistaken(engine: Any) -> None:
        calls.append(engine)
        raise OperationalError("select nope", None, Exception("no such column: nope"))

    monkeypatch.setattr(server.migrations, "upgrade", mistaken)
    with pytest.raises(OperationalError):
        server.prepare_database(metadata_settings(tmp_path / "m.db"))
    assert len(calls) == 1
