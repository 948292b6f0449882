"""`askmojo`: the command-line client of the metadata service.

    askmojo ingest PATH... --collection NAME [--batch N]
    askmojo search "QUERY" --collection NAME [-k N] [--where key=value ...]
    askmojo collections
    askmojo stats [--collection NAME]
    askmojo reconcile --collection NAME [--dry-run]

It talks to the metadata service only (`--address`, or METADATA_ADDRESS,
default localhost:50051). Every failure is one line on stderr: exit 2 for bad
usage, 1 for anything else (a failed call, or documents that failed), 130 for
Ctrl-C. Parsing and rendering live in cli_format.py, file walking in
cli_files.py; this module only wires them to gRPC and the terminal.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from pydantic import SecretStr
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from askmojo.cli_files import SourceFile, WalkReport, count_sources, iter_sources, load_document
from askmojo.cli_files import missing_paths as find_missing_paths
from askmojo.cli_format import (
    IngestTally,
    UsageError,
    build_filter,
    collections_table,
    describe_rpc_error,
    ingest_summary,
    reconcile_line,
    search_table,
    stats_table,
)
from askmojo.common.channels import ClientSecurity, open_channel
from askmojo.metadata.v1 import metadata_service_pb2 as pb
from askmojo.metadata.v1 import metadata_service_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BATCH = 64
# The service refuses more per batch (MAX_BATCH_DOCUMENTS defaults to 1000).
MAX_BATCH = 1000
# Text bytes per stream message: a batch of 64 large files must stay well under
# the service's MAX_MESSAGE_BYTES (64 MiB), or the whole stream would end with
# RESOURCE_EXHAUSTED instead of one batch failing.
MAX_BATCH_BYTES = 16 * 1024 * 1024
# Replies are small, but search hits carry chunk texts: room for a large top_k.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the caller prints it), not usage + error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} documents per batch")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    default_address = environ.get("METADATA_ADDRESS") or DEFAULT_ADDRESS
    parser = _Parser(
        prog="askmojo",
        description="Command-line client of the ASKMOJO metadata service.",
    )

    def connection_options(p: argparse.ArgumentParser, defaults: bool) -> None:
        # Accepted before and after the command (`askmojo --address X stats`
        # and `askmojo stats --address X`); only the top level holds the
        # defaults, or a subcommand's default would override the top level's.
        p.add_argument(
            "--address",
            default=default_address if defaults else argparse.SUPPRESS,
            help=f"metadata service HOST:PORT (env METADATA_ADDRESS; default {DEFAULT_ADDRESS})",
        )
        # None: not given (60 s per call; ingest's whole run unbounded).
        p.add_argument(
            "--timeout",
            type=_seconds,
            default=None if defaults else argparse.SUPPRESS,
            help="seconds per call, 0 for none (default 60); for ingest, seconds for the "
            "whole run (default none: it runs as long as there are files to send)",
        )
        # Security (DESIGN.md §9). A key on the command line shows in `ps`
        # and shell history: ASKMOJO_API_KEY is the better habit.
        p.add_argument(
            "--api-key",
            default=environ.get("ASKMOJO_API_KEY") or None if defaults else argparse.SUPPRESS,
            help="the service's API key (env ASKMOJO_API_KEY)",
        )
        p.add_argument(
            "--ca-file",
            default=None if defaults else argparse.SUPPRESS,
            help="PEM CA certificate to trust: connect with TLS",
        )
        p.add_argument(
            "--cert-file",
            default=None if defaults else argparse.SUPPRESS,
            help="PEM client certificate, for a service that asks for one (mTLS)",
        )
        p.add_argument(
            "--key-file",
            default=None if defaults else argparse.SUPPRESS,
            help="PEM private key of --cert-file",
        )

    connection_options(parser, defaults=True)
    common = _Parser(add_help=False)
    connection_options(common, defaults=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ingest = commands.add_parser(
        "ingest",
        parents=[common],
        help="store .txt/.md files and folders (recursively) in a collection",
        description="Stores .txt and .md files (folders recursively; hidden ones skipped). "
        "A document's id is its path relative to the folder given (a file given directly: "
        "its name); its metadata: source, extension, bytes. The collection is created if "
        "it does not exist.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files and folders")
    ingest.add_argument("--collection", "-c", required=True)
    ingest.add_argument(
        "--batch",
        type=_batch_size,
        default=DEFAULT_BATCH,
        help=f"documents per stream message (default {DEFAULT_BATCH})",
    )

    search = commands.add_parser("search", parents=[common], help="semantic search in a collection")
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--collection", "-c", required=True)
    search.add_argument("-k", "--top-k", type=_positive_int, default=10, dest="top_k")
    search.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata filter, repeatable (all must match); true/false, numbers and "
        "'quoted' strings are typed",
    )

    commands.add_parser("collections", parents=[common], help="list collections")

    stats = commands.add_parser(
        "stats", parents=[common], help="documents by state, database and pool"
    )
    stats.add_argument("--collection", "-c", default="", help="one collection (default: all)")

    reconcile = commands.add_parser(
        "reconcile", parents=[common], help="repair drift between database and vector index"
    )
    reconcile.add_argument("--collection", "-c", required=True)
    reconcile.add_argument(
        "--dry-run", action="store_true", help="report what would be repaired, repair nothing"
    )
    return parser


@dataclass
class App:
    """What every command needs: the stub, the call deadline, the consoles."""

    address: str
    timeout: float | None
    stub: Any
    out: Console
    err: Console
    # `ingest`'s whole run (its stream and the collection's creation); None:
    # unbounded, the service indexing each batch within its own budget.
    run_timeout: float | None = None


# --- ingest -------------------------------------------------------------------


@dataclass
class SentBatch:
    ids: list[str]
    # Files that failed locally (unreadable, not UTF-8, duplicate id) since
    # the previous batch: reported along with this batch's reply.
    local_failures: list[tuple[str, str]]


@dataclass
class RequestFeeder:
    """Produces the stream's requests lazily: gRPC pulls them from its own
    thread as flow control allows, so at most a few batches are read ahead of
    what the service has answered, never the whole tree. Hands each batch's
    ids to the main thread through a deque (thread-safe appends/pops)."""

    sources: Iterator[SourceFile]
    collection: str
    batch_size: int
    max_batch_bytes: int = MAX_BATCH_BYTES
    sent: collections.deque[SentBatch] = field(default_factory=collections.deque)
    # Failures after the last batch; read once the stream has ended.
    leftover_failures: list[tuple[str, str]] = field(default_factory=list)
    # An unexpected error in the gRPC thread, re-raised in the main thread.
    error: BaseException | None = None

    def requests(self) -> Iterator[pb.IngestDocumentsRequest]:
        try:
            yield from self._requests()
        except BaseException as exc:
            self.error = exc
            raise

    def _requests(self) -> Iterator[pb.IngestDocumentsRequest]:
        seen: dict[str, Path] = {}
        documents: list[pb.Document] = []
        size = 0
        failures: list[tuple[str, str]] = []
        for source in self.sources:
            first = seen.get(source.doc_id)
            if first is not None:
                # Two arguments can produce one id (a/README.md, b/README.md):
                # the second would silently replace the first.
                failures.append(
                    (source.doc_id, f"duplicate id: {source.path} and {first} have the same id")
                )
                continue
            seen[source.doc_id] = source.path
            loaded = load_document(source)
            if isinstance(loaded, str):
                failures.append((source.doc_id, loaded))
                continue
            text_bytes = len(loaded.text.encode())
            if documents and size + text_bytes > self.max_batch_bytes:
                yield self._flush(documents, failures)
                documents, size, failures = [], 0, []
            documents.append(loaded)
            size += text_bytes
            if len(documents) >= self.batch_size:
                yield self._flush(documents, failures)
                documents, size, failures = [], 0, []
        if documents:
            yield self._flush(documents, failures)
            failures = []
        self.leftover_failures = failures

    def _flush(
        self, documents: list[pb.Document], failures: list[tuple[str, str]]
    ) -> pb.IngestDocumentsRequest:
        # Recorded before the request leaves, so its reply always finds it.
        self.sent.append(SentBatch([d.id for d in documents], failures))
        return pb.IngestDocumentsRequest(collection=self.collection, documents=documents)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "- docs/s" if speed is None else f"{speed:,.1f} docs/s"
        return Text(shown, style="progress.data.speed")


def ensure_collection(app: App, name: str) -> None:
    try:
        created = app.stub.CreateCollection(
            pb.CreateCollectionRequest(name=name), timeout=app.timeout
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
            return
        raise
    print(
        f"created collection {created.name} ({created.model}, {created.dimension} dimensions, "
        f"chunks of {created.chunking.chunk_size} characters)",
        file=app.out.file,
    )


def run_ingest(app: App, args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.paths]
    missing = find_missing_paths(paths)
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(str(p) for p in missing)}")
    total = count_sources(paths)
    report = WalkReport()
    if total == 0:
        # Nothing to send: say so rather than create an empty collection.
        for _ in iter_sources(paths, report):
            pass
        lines = ["nothing to ingest: no .txt or .md files in the given paths"]
        lines += [f"  {where}: {reason}" for where, reason in report.errors]
        _print_lines(app, lines)
        return 1 if report.errors else 0
    feeder = RequestFeeder(iter_sources(paths, report), args.collection, args.batch)
    tally = IngestTally()
    started = time.monotonic()
    ensure_collection(app, args.collection)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        console=app.err,
        # Piped or redirected: no bar, only the summary.
        disable=not app.err.is_terminal,
    )
    with progress:
        task = progress.add_task("ingest", total=total)
        # No deadline unless --timeout was given: a stream of a large tree
        # runs as long as it must (each batch is indexed within the service's
        # own per-batch budget, INDEX_ON_WRITE_TIMEOUT).
        remaining = None
        if app.run_timeout is not None:
            remaining = max(0.001, app.run_timeout - _since(started))
        responses = app.stub.IngestDocuments(feeder.requests(), timeout=remaining)
        try:
            for response in responses:
                batch = feeder.sent.popleft() if feeder.sent else SentBatch([], [])
                for doc_id, reason in batch.local_failures:
                    tally.add_failure(doc_id, reason)
                tally.add_response(response, batch.ids)
                progress.update(task, completed=tally.total)
        except grpc.RpcError:
            if feeder.error is not None:
                raise feeder.error from None
            # What was acknowledged before the stream broke is still useful.
            _print_lines(app, ingest_summary(tally, args.collection, _since(started)))
            raise
        finally:
            responses.cancel()  # a no-op once the stream has ended
        for doc_id, reason in [*feeder.leftover_failures, *report.errors]:
            tally.add_failure(doc_id, reason)
        progress.update(task, completed=tally.total, total=max(total, tally.total))
    lines = ingest_summary(
        tally,
        args.collection,
        _since(started),
        ignored=report.ignored,
        ignored_explicit=report.ignored_explicit,
    )
    _print_lines(app, lines)
    return 1 if tally.failed else 0


def _since(started: float) -> float:
    return time.monotonic() - started


def _print_lines(app: App, lines: Sequence[str]) -> None:
    # Plain print, not rich: a long failure reason must not be wrapped or
    # marked up (file names may contain [brackets]).
    for line in lines:
        print(line, file=app.out.file)


# --- the other commands ----------------------------------------------------


def run_search(app: App, args: argparse.Namespace) -> int:
    where = build_filter(args.where)  # a usage error before any call
    request = pb.SearchRequest(collection=args.collection, query=args.query, top_k=args.top_k)
    if where is not None:
        request.filter.CopyFrom(where)
    response = app.stub.Search(request, timeout=app.timeout)
    if not response.hits:
        print(f"no results for {args.query!r} in {args.collection}", file=app.out.file)
        return 0
    app.out.print(search_table(response, args.query, args.collection))
    return 0


def run_collections(app: App, args: argparse.Namespace) -> int:
    found: list[pb.Collection] = []
    token = ""
    while True:
        page = app.stub.ListCollections(
            pb.ListCollectionsRequest(page_token=token), timeout=app.timeout
        )
        found.extend(page.collections)
        # A token seen twice would loop forever; the service never sends one.
        if not page.next_page_token or page.next_page_token == token:
            break
        token = page.next_page_token
    if not found:
        print(
            "no collections yet (`askmojo ingest PATH --collection NAME` creates one)",
            file=app.out.file,
        )
        return 0
    app.out.print(collections_table(found))
    return 0


def run_stats(app: App, args: argparse.Namespace) -> int:
    stats = app.stub.GetStats(pb.GetStatsRequest(collection=args.collection), timeout=app.timeout)
    app.out.print(stats_table(stats, args.collection))
    return 0


def run_reconcile(app: App, args: argparse.Namespace) -> int:
    response = app.stub.Reconcile(
        pb.ReconcileRequest(collection=args.collection, dry_run=args.dry_run),
        timeout=app.timeout,
    )
    print(reconcile_line(response, args.collection), file=app.out.file)
    return 0


COMMANDS = {
    "ingest": run_ingest,
    "search": run_search,
    "collections": run_collections,
    "stats": run_stats,
    "reconcile": run_reconcile,
}


# --- entry point --------------------------------------------------------------


def _fail(message: str) -> None:
    print(f"askmojo: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        return _run(args)
    except UsageError as exc:
        _fail(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130  # the shell's convention for SIGINT; nothing else to say
    except BrokenPipeError:
        # `askmojo collections | head`: the reader left. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def timeouts(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """(per call, ingest's whole run) from --timeout: each call gets 60 s
    when it is not given; ingest is one call (a stream) however long, so its
    run is bounded only when --timeout is given. 0 means none."""
    per_call = DEFAULT_TIMEOUT if args.timeout is None else (args.timeout or None)
    return per_call, args.timeout or None


def _run(args: argparse.Namespace) -> int:
    address = args.address.strip()
    if not address:
        raise UsageError("--address is empty (expected HOST:PORT)")
    timeout, run_timeout = timeouts(args)
    out = Console(file=sys.stdout)
    err = Console(file=sys.stderr)
    security = ClientSecurity(
        api_key=SecretStr(args.api_key) if args.api_key else None,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    with open_channel(address, security, options=_CHANNEL_OPTIONS) as channel:
        app = App(address, timeout, pb_grpc.MetadataServiceStub(channel), out, err, run_timeout)
        try:
            return COMMANDS[args.command](app, args)
        except grpc.RpcError as exc:
            _fail(describe_rpc_error(exc.code().name, exc.details() or "", address, timeout))
            return 1
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            # Reading files is checked per file; this is anything else the
            # OS refused (say, an unreadable folder given directly).
            _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            return 1


if __name__ == "__main__":
    sys.exit(main())
