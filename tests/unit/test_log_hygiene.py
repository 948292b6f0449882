"""Logs never carry whole SQL statements or their parameters (issue 11: each
failure with a long IN list wrote 0.3-2 MB of SQL and parameters)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path

import grpc
import pytest
from sqlalchemy import bindparam, create_engine, text
from sqlalchemy.exc import DBAPIError

from askmojo.common.logs import JsonFormatter, TextFormatter, exception_summary
from askmojo.common.v1 import common_pb2 as c
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings

SECRET = "parameter-value-that-must-not-be-logged"


def _huge_statement_error() -> DBAPIError:
    engine = create_engine("sqlite://", hide_parameters=False)
    values = [f"{SECRET}-{i}" for i in range(20_000)]
    statement = text("SELECT * FROM missing WHERE x IN :values").bindparams(
        bindparam("values", expanding=True)
    )
    with engine.connect() as conn, pytest.raises(DBAPIError) as info:
        conn.execute(statement, {"values": values})
    engine.dispose()
    assert len(str(info.value)) > 50_000  # what used to be logged
    return info.value


def _record(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "metadata_service.errors",
        logging.ERROR,
        __file__,
        1,
        "database error",
        None,
        (type(exc), exc, exc.__traceback__),
    )


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_formatters_bound_exceptions_and_messages(formatter: logging.Formatter) -> None:
    exc = _huge_statement_error()
    output = formatter.format(_record(exc))
    assert len(output) < 8_000
    assert SECRET not in output and "SELECT" not in output
    assert "OperationalError" in output and "no such table: missing" in output
    if isinstance(formatter, JsonFormatter):
        assert "no such table" in json.loads(output)["exception"]
    # A message made of the error's text is cut short.
    long_message = _record(exc)
    long_message.msg, long_message.args, long_message.exc_info = "failed: %s", (exc,), None
    assert len(formatter.format(long_message)) < 3_000


def test_exception_summary_is_one_bounded_line() -> None:
    summary = exception_summary(_huge_statement_error())
    assert summary == "OperationalError: OperationalError: no such table: missing"
    assert len(exception_summary(ValueError("x" * 10_000))) < 250
    assert "\n" not in exception_summary(ValueError("a\nb"))


def test_a_database_error_logs_a_summary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = metadata_settings(tmp_path / "metadata.db")
    prepare_database(settings)
    values = [c.MetadataValue(string_value=f"{SECRET}-{i}") for i in range(4000)]
    where = c.Filter(condition=c.Condition(key="k", op=c.OPERATOR_IN, values=values))
    caplog.set_level(logging.DEBUG)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="logs"), timeout=30)
        # A database error no request can cause on purpose: the table is gone.
        with sqlite3.connect(tmp_path / "metadata.db") as db:
            db.execute("DROP TABLE document_metadata")
        caplog.clear()
        with pytest.raises(grpc.RpcError) as info:
            stub.ListDocuments(pb.ListDocumentsRequest(collection="logs", filter=where), timeout=30)
        assert info.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    logged = (
        "\n".join(
            record.getMessage() + str(record.exc_info or "") + str(vars(record))
            for record in caplog.records
        )
        + caplog.text
    )
    assert "no such table: document_metadata" in logged
    assert SECRET not in logged and "SELECT" not in logged
    assert len(logged) < 20_000, len(logged)
    print(f"{len(logged)} characters logged", file=sys.stderr)


DOCUMENT_TEXT = "confidential-harbor-lantern-words"


def test_no_document_or_query_text_is_logged_at_info(
    tmp_path: Path, vector_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #12: a document's text and a search query stay out of the logs at
    INFO, on success and on refusal (an over-long query, a missing collection)."""
    settings = metadata_settings(
        tmp_path / "metadata.db", vector_service_address=vector_server.address
    )
    prepare_database(settings)
    caplog.set_level(logging.INFO)
    with (
        RunningServer.metadata(settings) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        stub = pb_grpc.MetadataServiceStub(channel)
        stub.CreateCollection(pb.CreateCollectionRequest(name="hygiene"), timeout=30)
        documents = [
            pb.Document(id=f"d{i}", text=f"{DOCUMENT_TEXT} {i}. " * 40, metadata={})
            for i in range(3)
        ]
        stub.UpsertDocuments(
            pb.UpsertDocumentsRequest(collection="hygiene", documents=documents), timeout=60
        )
        list(
            stub.IngestDocuments(
                iter([pb.IngestDocumentsRequest(collection="hygiene", documents=documents)]),
                timeout=60,
            )
        )
        stub.Search(pb.SearchRequest(collection="hygiene", query=DOCUMENT_TEXT), timeout=60)
        refused = [
            pb.SearchRequest(collection="hygiene", query=DOCUMENT_TEXT * 2000),
            pb.SearchRequest(collection="missing", query=DOCUMENT_TEXT),
        ]
        for request in refused:
            with pytest.raises(grpc.RpcError):
                stub.Search(request, timeout=60)
        with pytest.raises(grpc.RpcError):
            stub.UpsertDocuments(
                pb.UpsertDocumentsRequest(
                    collection="missing",
                    documents=[pb.Document(id="d0", text=DOCUMENT_TEXT)],
                ),
                timeout=60,
            )
    logged = "\n".join(
        record.getMessage() + str(record.exc_info or "") + str(vars(record))
        for record in caplog.records
    )
    assert caplog.records  # the services did log at INFO meanwhile
    assert DOCUMENT_TEXT not in logged
