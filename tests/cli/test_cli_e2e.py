"""The CLI against a real metadata service (real SQLite file, port 0, no
vector service: documents stay PENDING), in-process through `main()` and as
the installed `askmojo` console script."""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from askmojo import cli
from askmojo.client import Client, UpsertResult
from askmojo.common.filters import metadata_value_from_proto
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc
from tests.cli.conftest import CORPUS_IDS, Runner
from tests.conftest import RunningServer

ASKMOJO = Path(sys.executable).with_name("askmojo")
# Searching needs a vector service; this server has none. Whichever way the
# service refuses (UNIMPLEMENTED before Search existed, FAILED_PRECONDITION
# now), the CLI must say it in one line.
ONE_LINE_ERROR = re.compile(r"askmojo: [A-Z_]+: \S.*")


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err
    return lines[0]


def ingest(run_cli: Runner, server: RunningServer, *argv: str) -> tuple[int, list[str]]:
    outcome = run_cli("--address", server.address, "ingest", *argv)
    assert outcome.err == ""  # no progress bar when stderr is not a terminal
    return outcome.code, outcome.out.splitlines()


def summary_counts(line: str) -> dict[str, int]:
    return {
        state: int(n) for n, state in re.findall(r"(\d+) (indexed|unchanged|pending|failed)", line)
    }


def test_ingest_a_folder(
    run_cli: Runner,
    server: RunningServer,
    stub: pb_grpc.MetadataServiceStub,
    corpus: Path,
) -> None:
    code, lines = ingest(run_cli, server, str(corpus), "--collection", "docs", "--batch", "2")
    assert code == 1  # one file failed
    assert lines[0] == (
        "created collection docs (all-MiniLM-L6-v2, 384 dimensions, chunks of 128 tokens)"
    )
    assert lines[1].startswith("5 documents into docs in ")
    assert summary_counts(lines[1]) == {"indexed": 0, "unchanged": 0, "pending": 4, "failed": 1}
    assert lines[2:] == [
        "1 other files ignored (only .txt and .md are ingested)",
        "failures:",
        "  nested/latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)",
    ]

    listed = stub.ListDocuments(pb.ListDocumentsRequest(collection="docs"))
    assert [d.id for d in listed.documents] == CORPUS_IDS
    stored = stub.GetDocument(pb.GetDocumentRequest(collection="docs", id="nested/cats.md"))
    assert stored.text == (corpus / "nested" / "cats.md").read_text()
    metadata = {k: metadata_value_from_proto(v) for k, v in stored.metadata.items()}
    assert metadata == {
        "source": "nested/cats.md",
        "extension": "md",
        "bytes": (corpus / "nested" / "cats.md").stat().st_size,
    }


def test_ingest_progress_bar_on_a_terminal(server: RunningServer, corpus: Path) -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    out = Console(file=io.StringIO())
    args = cli.build_parser({}).parse_args(["ingest", str(corpus), "-c", "docs", "--batch", "1"])
    with Client(server.address) as client:
        app = cli.App(server.address, 60.0, client, out, terminal)
        assert cli.run_ingest(app, args) == 1
    bar = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "ingesting" in bar and "5/5" in bar and "docs/s" in bar
    assert "5 documents into docs" in out.file.getvalue()  # type: ignore[attr-defined]


def test_ingest_again_is_unchanged_and_exits_0(
    run_cli: Runner, server: RunningServer, corpus: Path
) -> None:
    ingest(run_cli, server, str(corpus), "-c", "docs")
    # Files named directly: their ids are their names, the same as at the top
    # of the folder, so nothing changed; the collection exists already.
    code, lines = ingest(
        run_cli, server, str(corpus / "wal.md"), str(corpus / "grpc.txt"), "-c", "docs"
    )
    assert code == 0
    assert len(lines) == 1
    assert summary_counts(lines[0]) == {"indexed": 0, "unchanged": 2, "pending": 0, "failed": 0}


def test_ingest_refused_documents_fail_alone(
    run_cli: Runner, server: RunningServer, tmp_path: Path
) -> None:
    (tmp_path / "blank.md").write_text("   \n")
    (tmp_path / "fine.md").write_text("some text")
    code, lines = ingest(run_cli, server, str(tmp_path), "-c", "docs")
    assert code == 1
    assert summary_counts(lines[1]) == {"indexed": 0, "unchanged": 0, "pending": 1, "failed": 1}
    assert lines[-1].startswith("  blank.md: INVALID_ARGUMENT: text")


def test_ingest_nothing_creates_nothing(
    run_cli: Runner, server: RunningServer, corpus: Path
) -> None:
    outcome = run_cli("--address", server.address, "ingest", str(corpus / "logo.png"), "-c", "docs")
    assert (outcome.code, outcome.err) == (0, "")
    assert outcome.out.startswith("nothing to ingest")
    assert "no collections yet" in run_cli("--address", server.address, "collections").out


def test_collections_and_stats(run_cli: Runner, server: RunningServer, corpus: Path) -> None:
    ingest(run_cli, server, str(corpus), "-c", "docs")
    ingest(run_cli, server, str(corpus / "nested"), "-c", "more-docs")

    listed = run_cli("--address", server.address, "collections")
    assert (listed.code, listed.err) == (0, "")
    rows = {line.split()[1]: line for line in listed.out.splitlines() if "all-MiniLM" in line}
    assert set(rows) == {"docs", "more-docs"}
    docs_row = r"│\s+4\s+│\s+4\s+│ all-MiniLM-L6-v2\s+│\s+384\s+│\s+128/16 tokens"
    assert re.search(docs_row, rows["docs"])
    assert re.search(r"│\s+2\s+│", rows["more-docs"])

    stats = run_cli("stats", "--address", server.address)
    assert (stats.code, stats.err) == (0, "")
    assert "all collections" in stats.out
    assert "6 (0 indexed, 6 pending, 0 failed)" in stats.out
    assert "sqlite" in stats.out and "QueuePool" in stats.out

    one = run_cli("stats", "--address", server.address, "--collection", "more-docs")
    assert "2 (0 indexed, 2 pending, 0 failed)" in one.out


def test_unknown_collection_is_one_line(run_cli: Runner, server: RunningServer) -> None:
    outcome = run_cli("--address", server.address, "stats", "-c", "nope")
    assert (outcome.code, outcome.out) == (1, "")
    assert one_line(outcome.err).startswith("askmojo: NOT_FOUND: ")


@pytest.mark.parametrize(
    "argv",
    [
        # No vector service here: DENSE is refused (HYBRID would answer
        # degraded, from the keyword index).
        ["search", "readers", "-c", "docs", "--mode", "dense", "--where", "extension=md"],
        ["reconcile", "-c", "docs", "--dry-run"],
    ],
)
def test_calls_the_service_refuses_are_one_line(
    run_cli: Runner, server: RunningServer, corpus: Path, argv: list[str]
) -> None:
    ingest(run_cli, server, str(corpus), "-c", "docs")
    outcome = run_cli("--address", server.address, *argv)
    assert (outcome.code, outcome.out) == (1, "")
    assert ONE_LINE_ERROR.fullmatch(one_line(outcome.err))


# --- the installed console script ---------------------------------------------


def askmojo(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ASKMOJO), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_console_script_ingests_with_the_address_from_the_environment(
    server: RunningServer, corpus: Path
) -> None:
    done = askmojo("ingest", str(corpus), "-c", "docs", env={"METADATA_ADDRESS": server.address})
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    assert "5 documents into docs" in done.stdout


@pytest.mark.parametrize("argv", [["collections"], ["stats"], ["search", "q", "-c", "docs"]])
def test_unreachable_service_is_one_line_and_exit_1(argv: list[str]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    done = askmojo("--address", address, *argv)
    assert done.returncode == 1
    assert done.stdout == ""
    assert one_line(done.stderr) == (
        f"askmojo: cannot reach the metadata service at {address} (is `make run` running?)"
    )


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A port that accepts TCP connections and never answers: a call to it
    hangs until its deadline, long enough to press Ctrl-C."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(30)
        yield sock


def address_of(sock: socket.socket) -> str:
    return f"127.0.0.1:{sock.getsockname()[1]}"


def test_ctrl_c_exits_130_quietly(silent_listener: socket.socket) -> None:
    proc = subprocess.Popen(
        [str(ASKMOJO), "--address", address_of(silent_listener), "--timeout", "60", "collections"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Once it has sent its HTTP/2 preface, the CLI is past its imports and
        # inside the call: where a person would press Ctrl-C.
        connection, _ = silent_listener.accept()
        with connection:
            connection.settimeout(30)
            assert connection.recv(1)
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert (out, err) == ("", "")


def test_deadline_is_one_line(silent_listener: socket.socket) -> None:
    done = askmojo("--address", address_of(silent_listener), "--timeout", "1", "stats")
    assert done.returncode == 1
    assert one_line(done.stderr) == (
        "askmojo: DEADLINE_EXCEEDED: no answer within 1 s (a longer --timeout may help)"
    )


class _RecordingClient(Client):
    """The real client, noting the timeout each ingest stream gets."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.stream_timeouts: list[float | None] = []

    def ingest(  # type: ignore[override]
        self, collection: str, documents: Any, **options: Any
    ) -> Iterator[UpsertResult]:
        self.stream_timeouts.append(options.get("timeout"))
        return super().ingest(collection, documents, **options)


@pytest.mark.parametrize(
    ("flags", "bounded"), [([], None), (["--timeout", "0"], None), (["--timeout", "300"], 300.0)]
)
def test_ingest_timeout_bounds_the_whole_run_only_when_given(
    server: RunningServer, corpus: Path, flags: list[str], bounded: float | None
) -> None:
    """README: `--timeout` bounds each call; ingest is one call (a stream)
    however long, so it bounds the whole run when given and nothing
    otherwise: the 60 s default must not cut a long ingest short."""
    args = cli.build_parser({}).parse_args(["ingest", str(corpus), "-c", "docs", *flags])
    per_call, run_timeout = cli.timeouts(args)
    assert per_call == (bounded or (None if flags else cli.DEFAULT_TIMEOUT))
    out = Console(file=io.StringIO())
    with _RecordingClient(server.address) as client:
        app = cli.App(server.address, per_call, client, out, out, run_timeout)
        assert cli.run_ingest(app, args) == 1  # the corpus's latin-1 file
    [stream_timeout] = client.stream_timeouts
    if bounded is None:
        assert stream_timeout is None
    else:
        assert stream_timeout is not None and 0 < stream_timeout <= bounded
    assert "5 documents into docs" in out.file.getvalue()  # type: ignore[attr-defined]
