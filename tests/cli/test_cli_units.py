"""The CLI's pure parts: --where parsing, file walking and ids, reading,
the document feed, tallies and rendering. No server involved."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from askmojo import cli
from askmojo.cli import DocumentFeeder, build_parser
from askmojo.cli_files import (
    SourceFile,
    WalkReport,
    count_sources,
    iter_sources,
    load_document,
    missing_paths,
    read_text,
)
from askmojo.cli_format import (
    IngestTally,
    UsageError,
    build_filter,
    collections_table,
    describe_rpc_error,
    human_bytes,
    ingest_summary,
    parse_value,
    parse_where,
    reconcile_line,
    search_table,
    snippet,
    stats_rows,
)
from askmojo.client import (
    AskmojoError,
    Collection,
    DatabaseStats,
    Document,
    InvalidArgument,
    NotFound,
    PoolStats,
    ReconcileReport,
    SearchHit,
    Stats,
    UpsertResult,
    UpsertState,
)
from askmojo.common.filters import Op
from askmojo.common.v1 import common_pb2 as c


def render(renderable: object, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


# --- --where ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("False", False),
        ("2024", 2024),
        ("-3", -3),
        ("+7", 7),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("hello", "hello"),
        ("", ""),
        ("'007'", "007"),  # quotes force a string
        ('"true"', "true"),
        ("nan", "nan"),  # not a finite number: stays text
        ("inf", "inf"),
        ("1_000", "1_000"),  # Python's int() would take it; a person means text
        ("0x10", "0x10"),
        ("2024-01-01", "2024-01-01"),
    ],
)
def test_where_values_are_typed(raw: str, expected: object) -> None:
    value = parse_value(raw)
    assert value == expected
    assert type(value) is type(expected)


def test_where_splits_on_the_first_equals_sign() -> None:
    condition = parse_where("query=a=b")
    assert (condition.key, condition.op, condition.values) == ("query", Op.EQ, ("a=b",))


@pytest.mark.parametrize("bad", ["year", "=2024", " =1", "bad key=1", "ä=1", "x" * 65 + "=1"])
def test_malformed_where_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="--where"):
        parse_where(bad)


def test_no_where_means_no_filter() -> None:
    assert build_filter([]) is None


def test_one_where_is_a_single_condition() -> None:
    proto = build_filter(["extension=md"])
    assert proto == c.Filter(
        condition=c.Condition(
            key="extension", op=c.OPERATOR_EQ, value=c.MetadataValue(string_value="md")
        )
    )


def test_several_wheres_are_combined_with_all() -> None:
    proto = build_filter(["year=2024", "draft=false", "score=0.5"])
    assert proto is not None
    assert proto.WhichOneof("kind") == "all"
    conditions = [f.condition for f in proto.all.filters]
    assert [(x.key, x.op) for x in conditions] == [
        ("year", c.OPERATOR_EQ),
        ("draft", c.OPERATOR_EQ),
        ("score", c.OPERATOR_EQ),
    ]
    assert conditions[0].value == c.MetadataValue(int_value=2024)
    assert conditions[1].value == c.MetadataValue(bool_value=False)
    assert conditions[2].value == c.MetadataValue(double_value=0.5)


# --- walking and ids ------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "guides" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("alpha")
    (root / "b.txt").write_text("bravo")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".hidden.md").write_text("hidden")
    (root / ".git" / "notes.md").write_text("in .git")
    (root / "guides" / "c.md").write_text("charlie")
    (root / "guides" / "deep" / "D.TXT").write_text("delta")
    (root / "guides" / "deep" / "e.rst").write_text("echo")
    return root


def test_folder_ids_are_relative_paths_with_slashes(tree: Path) -> None:
    report = WalkReport()
    found = list(iter_sources([tree], report))
    assert [s.doc_id for s in found] == ["a.md", "b.txt", "guides/c.md", "guides/deep/D.TXT"]
    assert found[2].path == tree / "guides" / "c.md"
    # image.png and e.rst; hidden files and folders are not even counted.
    assert report.ignored == 2
    assert report.ignored_explicit == []
    assert count_sources([tree]) == 4


def test_a_file_argument_is_named_by_its_file_name(tree: Path) -> None:
    report = WalkReport()
    found = list(
        iter_sources([tree / "guides" / "c.md", tree / "image.png", tree / "guides"], report)
    )
    assert [s.doc_id for s in found] == ["c.md", "c.md", "deep/D.TXT"]
    assert report.ignored_explicit == [str(tree / "image.png")]


def test_walking_is_lazy(tree: Path) -> None:
    walk = iter_sources([tree], WalkReport())
    assert next(walk).doc_id == "a.md"
    # A file created after the walk started (and after its folder was
    # listed) is not seen; one in a folder not yet listed is.
    (tree / "guides" / "late.md").write_text("late")
    # (A folder's files come before its subfolders'.)
    assert [s.doc_id for s in walk] == [
        "b.txt",
        "guides/c.md",
        "guides/late.md",
        "guides/deep/D.TXT",
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_special_files_are_skipped_not_read(tree: Path) -> None:
    os.mkfifo(tree / "pipe.txt")  # reading it would block forever
    report = WalkReport()
    assert "pipe.txt" not in [s.doc_id for s in iter_sources([tree], report)]
    assert report.ignored == 3


def test_folder_symlinks_are_not_followed(tree: Path) -> None:
    (tree / "guides" / "loop").symlink_to(tree, target_is_directory=True)
    ids = [s.doc_id for s in iter_sources([tree], WalkReport())]
    assert ids == ["a.md", "b.txt", "guides/c.md", "guides/deep/D.TXT"]


def test_missing_paths_are_found_before_any_call(tree: Path) -> None:
    assert missing_paths([tree, tree / "nope.md"]) == [tree / "nope.md"]


# --- reading ---------------------------------------------------------------------


def test_a_document_carries_source_extension_and_size(tree: Path) -> None:
    (tree / "guides" / "c.md").write_text("café\n")
    document = load_document(SourceFile(tree / "guides" / "c.md", "guides/c.md"))
    assert isinstance(document, Document)
    assert document.id == "guides/c.md"
    assert document.text == "café\n"
    assert dict(document.metadata) == {
        "source": "guides/c.md",
        "extension": "md",
        "bytes": 6,  # bytes, not characters
    }


def test_extension_is_lower_case(tree: Path) -> None:
    document = load_document(SourceFile(tree / "guides" / "deep" / "D.TXT", "deep/D.TXT"))
    assert isinstance(document, Document)
    assert document.metadata["extension"] == "txt"


def test_non_utf8_is_refused_with_the_offending_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("olé".encode("latin-1"))
    assert read_text(path) == "not UTF-8 text (byte 0xe9 at offset 2)"


def test_binary_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.md"
    path.write_bytes(b"abc\x00def")
    assert read_text(path) == "binary file (contains NUL bytes)"


def test_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.md"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert read_text(path) == ("hello", 8)


def test_large_files_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x" * 100)
    assert read_text(path, max_bytes=99) == "too large (100 bytes; at most 99 are read)"


def test_unreadable_file_says_why(tmp_path: Path) -> None:
    link = tmp_path / "dangling.md"
    link.symlink_to(tmp_path / "gone.md")
    assert read_text(link) == "cannot read: No such file or directory"


# --- the document feed (the SDK batches it) --------------------------------------------


def sources_of(tmp_path: Path, names_and_texts: dict[str, bytes]) -> list[SourceFile]:
    found = []
    for name, data in names_and_texts.items():
        path = tmp_path / name.replace("/", "_")
        path.write_bytes(data)
        found.append(SourceFile(path, name))
    return found


def test_feeder_yields_documents_and_sets_local_failures_aside(tmp_path: Path) -> None:
    sources = sources_of(
        tmp_path, {"1.md": b"one", "bad.md": b"\xff", "2.md": b"two", "tail.md": b"\xfe"}
    )
    sources.insert(2, SourceFile(sources[0].path, "1.md"))  # same id again
    feeder = DocumentFeeder(iter(sources))
    assert [d.id for d in feeder.documents()] == ["1.md", "2.md"]
    failures = list(feeder.failures)
    assert [doc_id for doc_id, _ in failures] == ["bad.md", "1.md", "tail.md"]
    assert failures[0][1].startswith("not UTF-8 text")
    assert failures[1][1].startswith("duplicate id:")
    tally = IngestTally()
    feeder.drain_into(tally)
    assert tally.failed == 3
    assert not feeder.failures


def test_documents_are_read_lazily(tmp_path: Path) -> None:
    sources = sources_of(tmp_path, {"1.md": b"one", "2.md": b"two", "3.md": b"three"})
    documents = DocumentFeeder(iter(sources)).documents()
    next(documents)
    sources[2].path.write_bytes(b"changed after the first document left")
    assert [d.text for d in documents] == ["two", "changed after the first document left"]


# --- tallies and the summary ---------------------------------------------------------


def result(doc_id: str, state: UpsertState, error: AskmojoError | None = None) -> UpsertResult:
    return UpsertResult(id=doc_id, state=state, error=error)


def test_tally_counts_states_and_keeps_failure_reasons() -> None:
    tally = IngestTally()
    tally.add_results(
        [
            result("a", UpsertState.INDEXED),
            result("b", UpsertState.UNCHANGED),
            result("c", UpsertState.PENDING),
            result(
                "d",
                UpsertState.FAILED,
                InvalidArgument("documents[3].text: text must not be empty"),
            ),
        ]
    )
    assert dict(tally.counts) == {"indexed": 1, "unchanged": 1, "pending": 1, "failed": 1}
    # The position in the batch means nothing to the user; the id says which.
    assert tally.failures == [("d", "INVALID_ARGUMENT: text: text must not be empty")]


def test_a_refused_batch_fails_each_of_its_documents() -> None:
    tally = IngestTally()
    refused = NotFound("no collection 'x'")
    tally.add_results(
        [result("a", UpsertState.FAILED, refused), result("b", UpsertState.FAILED, refused)]
    )
    assert tally.failed == 2
    assert tally.failures == [
        ("a", "NOT_FOUND: no collection 'x'"),
        ("b", "NOT_FOUND: no collection 'x'"),
    ]


def test_summary_shows_every_state_and_the_first_failures() -> None:
    tally = IngestTally()
    tally.counts.update({"indexed": 3, "unchanged": 1})
    for i in range(7):
        tally.add_failure(f"f{i}.md", "not UTF-8 text (byte 0xff at offset 0)")
    lines = ingest_summary(
        tally, "notes", 2.0, ignored=2, ignored_explicit=["x.png"], shown_failures=5
    )
    assert lines[0] == (
        "11 documents into notes in 2.0 s (5.5 docs/s): 3 indexed, 1 unchanged, 0 pending, 7 failed"
    )
    assert lines[1] == "2 other files ignored (only .txt and .md are ingested)"
    assert lines[2] == "skipped x.png: only .txt and .md files are ingested"
    assert lines[3] == "failures:"
    assert lines[4] == "  f0.md: not UTF-8 text (byte 0xff at offset 0)"
    assert lines[-1] == "  … and 2 more"
    assert len(lines) == 10


def test_summary_of_a_clean_run_is_one_line() -> None:
    tally = IngestTally()
    tally.counts.update({"pending": 1})
    assert ingest_summary(tally, "notes", 0.5) == [
        "1 document into notes in 0.5 s (2.0 docs/s): 0 indexed, 0 unchanged, 1 pending, 0 failed"
    ]


# --- rendering ------------------------------------------------------------------------


def test_snippet_collapses_whitespace_and_cuts() -> None:
    assert snippet("  a\n\n b\t c  ") == "a b c"
    long = "word " * 50
    cut = snippet(long)
    assert len(cut) <= 100
    assert cut.endswith("…")
    assert "  " not in cut


@pytest.mark.parametrize(
    ("count", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_human_bytes(count: int, shown: str) -> None:
    assert human_bytes(count) == shown


def hit(document_id: str, text: str, score: float = 0.0) -> SearchHit:
    return SearchHit(
        document_id=document_id, chunk_id=f"{document_id}#0", score=score, text=text, metadata={}
    )


def test_search_table_ranks_scores_ids_and_snippets() -> None:
    hits = [
        hit(document_id="wal.md", score=0.87654, text="SQLite in\nWAL mode " * 20),
        hit(document_id="grpc.md", score=0.5, text="gRPC streams"),
    ]
    text = render(search_table(hits, "wal", "notes"))
    assert "2 results for 'wal' in notes" in text
    rows = [line for line in text.splitlines() if "wal.md" in line or "grpc.md" in line]
    assert "1" in rows[0] and "0.877" in rows[0] and "SQLite in WAL mode" in rows[0]
    assert "2" in rows[1] and "0.500" in rows[1] and "gRPC streams" in rows[1]
    assert "…" in rows[0]


def test_tables_show_brackets_as_text_not_markup() -> None:
    hits = [hit(document_id="notes[draft].md", text="[/bold] see [1] and [link]")]
    text = render(search_table(hits, "[red]q", "notes"))
    assert "notes[draft].md" in text
    assert "[/bold] see [1] and [link]" in text
    assert "results for '[red]q'" in text


def test_collections_table() -> None:
    text = render(
        collections_table(
            [
                Collection(
                    name="notes",
                    description="",
                    document_count=12,
                    chunk_count=30,
                    model="all-MiniLM-L6-v2",
                    dimension=384,
                    chunk_size=800,
                    chunk_overlap=100,
                    create_time=None,
                    vector_collection="notes-1",
                )
            ]
        )
    )
    row = next(line for line in text.splitlines() if "notes" in line)
    for cell in ("12", "30", "all-MiniLM-L6-v2", "384", "800/100 characters"):
        assert cell in row


def make_stats(**fields: object) -> Stats:
    values: dict[str, object] = {
        "documents_by_state": {},
        "chunk_count": 0,
        "truncated_chunk_count": 0,
        "database": DatabaseStats("", 0, 0, "", 0, 0),
        "pool": PoolStats("", 0, 0, 0, 0, 0),
        "worker_pid": 0,
        **fields,
    }
    return Stats(**values)  # type: ignore[arg-type]


def test_stats_rows() -> None:
    stats = make_stats(
        pool=PoolStats(
            pool_class="QueuePool", size=5, checked_out=1, checked_in=4, overflow=0, max_overflow=20
        ),
        database=DatabaseStats(
            dialect="sqlite",
            database_bytes=2 * 1024**2,
            wal_bytes=4096,
            journal_mode="wal",
            write_transactions=4,
            writes=10,
        ),
        documents_by_state={"indexed": 9, "pending": 2},
        chunk_count=40,
        worker_pid=123,
        truncated_chunk_count=3,
        keyword_index_bytes=3 * 1024**2,
    )
    assert dict(stats_rows(stats)) == {
        "documents": "11 (9 indexed, 2 pending, 0 failed)",
        "chunks": "40",
        "truncated chunks": "3 (longer than the model's window; only their start is searchable)",
        "database": "sqlite, 2.0 MiB, journal wal (4.0 KiB WAL)",
        "keyword index": "3.0 MiB",
        "pool": "QueuePool: size 5, 1 checked out, 4 idle, overflow 0/20",
        "worker pid": "123",
        "writes": "10 in 4 transactions (2.50 per commit, this worker)",
    }


def test_ingest_summary_warns_of_truncated_chunks() -> None:
    tally = IngestTally()
    tally.add_results(
        [
            UpsertResult(id="a", state=UpsertState.INDEXED, truncated_chunks=2),
            UpsertResult(id="b", state=UpsertState.INDEXED, truncated_chunks=1),
            UpsertResult(id="c", state=UpsertState.UNCHANGED),
        ]
    )
    lines = ingest_summary(tally, "notes", 1.0)
    assert lines[1] == (
        "3 chunks were longer than the model's window and were truncated; use smaller chunk_size"
    )
    assert len(ingest_summary(IngestTally(), "notes", 1.0)) == 1  # none: no warning


def test_stats_of_a_server_database_has_no_wal() -> None:
    stats = make_stats(database=DatabaseStats("postgresql", 10, 0, "", 0, 0))
    assert dict(stats_rows(stats))["database"] == "postgresql, 10 B"
    assert "writes" not in dict(stats_rows(stats))


def test_reconcile_lines() -> None:
    counts = ReconcileReport(
        missing_vectors=1, orphan_vectors=2, stale_vectors=3, pending_resumed=4, dry_run=False
    )
    done = reconcile_line(counts, "notes")
    assert done == (
        "reconciled notes: 1 missing vectors re-indexed, 2 orphan vectors removed, "
        "3 stale vectors replaced, 4 pending or failed chunks resumed"
    )
    dry = reconcile_line(dataclasses.replace(counts, dry_run=True), "notes")
    assert dry.startswith("dry run on notes: would re-index 1 missing vectors")


# --- errors and arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (
            "UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            "cannot reach the metadata service at localhost:50051 (is `make run` running?)",
        ),
        (
            "UNAVAILABLE",
            "DNS resolution failed for nosuchhost:50051",
            "cannot reach the metadata service at localhost:50051 (is `make run` running?)",
        ),
        # The service's own UNAVAILABLE is shown as it is.
        ("UNAVAILABLE", "database is locked", "UNAVAILABLE: database is locked"),
        ("UNIMPLEMENTED", "Method not implemented!", "UNIMPLEMENTED: Method not implemented!"),
        ("NOT_FOUND", "no collection\n'x'", "NOT_FOUND: no collection 'x'"),
        ("INTERNAL", "", "INTERNAL: no details"),
        (
            "DEADLINE_EXCEEDED",
            "Deadline Exceeded",
            "DEADLINE_EXCEEDED: no answer within 60 s (a longer --timeout may help)",
        ),
    ],
)
def test_rpc_errors_are_one_line(code: str, details: str, expected: str) -> None:
    assert describe_rpc_error(code, details, "localhost:50051", 60.0) == expected


def test_address_comes_from_the_flag_then_the_environment() -> None:
    assert build_parser({}).parse_args(["collections"]).address == "localhost:50051"
    env = {"METADATA_ADDRESS": "db:1"}
    assert build_parser(env).parse_args(["collections"]).address == "db:1"
    assert build_parser(env).parse_args(["--address", "x:2", "collections"]).address == "x:2"
    # Also accepted after the command, where people tend to type it.
    assert build_parser(env).parse_args(["collections", "--address", "y:3"]).address == "y:3"


def test_search_arguments() -> None:
    args = build_parser({}).parse_args(
        ["search", "what is wal", "-c", "notes", "-k", "3", "--where", "a=1", "--where", "b=x"]
    )
    assert (args.query, args.collection, args.top_k) == ("what is wal", "notes", 3)
    assert args.where == ["a=1", "b=x"]
    assert args.timeout is None  # not given: 60 s per call (see _run)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["search", "q"], "--collection"),
        (["search", "q", "-c", "n", "-k", "0"], "must be at least 1"),
        (["search", "q", "-c", "n", "--where", "nokey"], "expected key=value"),
        (["ingest", "-c", "n"], "PATH"),
        (["ingest", "/no/such/path", "-c", "n"], "no such file or folder: /no/such/path"),
        (["ingest", ".", "-c", "n", "--batch", "5000"], "at most 1000"),
        (["stats", "--timeout", "-1"], "must not be negative"),
        (["--address", " ", "collections"], "--address is empty"),
        (["frobnicate"], "invalid choice"),
        (["--ca-file", "/no/such/ca.pem", "stats"], "--ca-file /no/such/ca.pem: cannot read it"),
        (["stats", "--cert-file", "/etc/hostname"], "--cert-file is set without --key-file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("askmojo: ")
    assert message in lines[0]


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["search", "--help"]) == 0
    assert "--where" in capsys.readouterr().out
