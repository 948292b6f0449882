"""A metadata service paired with the session's vector service, for the
LangChain standard suites; and their async tests run by pytest-asyncio."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: object) -> Iterator[None]:
    """The standard suites' `async def` tests carry no asyncio mark (LangChain
    runs them in pytest-asyncio's auto mode); this directory marks them, so
    the strict mode of the rest of the suite stays. Innermost wrapper: runs
    before pytest-asyncio's wrapper looks for the mark."""
    outcome = yield
    result = outcome.get_result()  # type: ignore[attr-defined]
    for item in result if isinstance(result, list) else [result]:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.add_marker(pytest.mark.asyncio)


@pytest.fixture(scope="module")
def metadata_server(
    tmp_path_factory: pytest.TempPathFactory, vector_server: RunningServer
) -> Iterator[RunningServer]:
    settings = metadata_settings(
        Path(tmp_path_factory.mktemp("langchain")) / "metadata.db",
        vector_service_address=vector_server.address,
        index_poll_seconds=0.2,
        index_max_backoff=0.5,
    )
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield running
