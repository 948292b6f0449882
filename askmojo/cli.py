"""`askmojo`: the command-line client of the metadata service.

    askmojo ingest PATH... --collection NAME [--batch N]
    askmojo search "QUERY" --collection NAME [-k N] [--where key=value ...]
    askmojo collections
    askmojo stats [--collection NAME]
    askmojo reconcile --collection NAME [--dry-run]

It talks to the metadata service only (`--address`, or METADATA_ADDRESS,
default localhost:50051; several comma-separated addresses or a gRPC target
work too) through the Python SDK, `askmojo.client`. Every failure is one line
on stderr: exit 2 for bad usage, 1 for anything else (a failed call, or
documents that failed), 130 for Ctrl-C. Parsing and rendering live in
cli_format.py, file walking in cli_files.py; this module only wires them to
the SDK and the terminal.
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
from typing import NoReturn

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
    degraded_note,
    describe_rpc_error,
    ingest_summary,
    reconcile_line,
    search_table,
    stats_table,
)
from askmojo.client import AlreadyExists, AskmojoError, Client, Document
from askmojo.common import tls

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BATCH = 64
# The service refuses more per batch (MAX_BATCH_DOCUMENTS defaults to 1000).
# (The SDK also caps a batch's text bytes well under MAX_MESSAGE_BYTES.)
MAX_BATCH = 1000


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
            help="metadata service HOST:PORT, several comma-separated (calls go round robin "
            "to the healthy ones) or a gRPC target such as dns:///metadata:50051 "
            f"(env METADATA_ADDRESS; default {DEFAULT_ADDRESS})",
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

    search = commands.add_parser(
        "search", parents=[common], help="keyword + semantic search in a collection"
    )
    search.add_argument("query", metavar="QUERY")
    search.add_argument("--collection", "-c", required=True)
    search.add_argument("-k", "--top-k", type=_positive_int, default=10, dest="top_k")
    search.add_argument(
        "--mode",
        choices=("hybrid", "dense", "keyword"),
        default="hybrid",
        help="hybrid (default): keyword index and dense vectors fused by rank; "
        "dense: vectors alone; keyword: the keyword index alone",
    )
    search.add_argument(
        "--ranks",
        action="store_true",
        help="show each hit's rank by the dense and the keyword retriever ('-': not found)",
    )
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
    """What every command needs: the SDK client, the call deadline, the consoles."""

    address: str
    timeout: float | None
    client: Client
    out: Console
    err: Console
    # `ingest`'s whole run (its stream and the collection's creation); None:
    # unbounded, the service indexing each batch within its own budget.
    run_timeout: float | None = None


# --- ingest -------------------------------------------------------------------


@dataclass
class DocumentFeeder:
    """The documents of a walk, read lazily: the SDK pulls them from gRPC's
    sending thread as the stream's window allows, so only a few batches are
    read ahead of what the service has answered, never the whole tree.
    Files that cannot be documents (unreadable, not UTF-8, a duplicate id)
    go to `failures`, a deque the main thread drains (thread-safe
    appends/pops)."""

    sources: Iterator[SourceFile]
    failures: collections.deque[tuple[str, str]] = field(default_factory=collections.deque)

    def documents(self) -> Iterator[Document]:
        seen: dict[str, Path] = {}
        for source in self.sources:
            first = seen.get(source.doc_id)
            if first is not None:
                # Two arguments can produce one id (a/README.md, b/README.md):
                # the second would silently replace the first.
                self.failures.append(
                    (source.doc_id, f"duplicate id: {source.path} and {first} have the same id")
                )
                continue
            seen[source.doc_id] = source.path
            loaded = load_document(source)
            if isinstance(loaded, str):
                self.failures.append((source.doc_id, loaded))
                continue
            yield loaded

    def drain_into(self, tally: IngestTally) -> None:
        while self.failures:
            doc_id, reason = self.failures.popleft()
            tally.add_failure(doc_id, reason)


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        shown = "- docs/s" if speed is None else f"{speed:,.1f} docs/s"
        return Text(shown, style="progress.data.speed")


def ensure_collection(app: App, name: str) -> None:
    try:
        created = app.client.create_collection(name, timeout=app.timeout)
    except AlreadyExists:
        return
    print(
        f"created collection {created.name} ({created.model}, {created.dimension} dimensions, "
        f"chunks of {created.chunk_size} {created.chunk_unit})",
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
    feeder = DocumentFeeder(iter_sources(paths, report))
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
        results = app.client.ingest(
            args.collection, feeder.documents(), batch_size=args.batch, timeout=remaining
        )
        try:
            for result in results:
                feeder.drain_into(tally)
                tally.add_result(result)
                progress.update(task, completed=tally.total)
        except AskmojoError:
            # What was acknowledged before the stream broke is still useful.
            feeder.drain_into(tally)
            _print_lines(app, ingest_summary(tally, args.collection, _since(started)))
            raise
        feeder.drain_into(tally)
        for doc_id, reason in report.errors:
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
    hits = app.client.search(
        args.collection,
        args.query,
        top_k=args.top_k,
        where=where,
        mode=args.mode,
        timeout=app.timeout,
    )
    if hits.degraded:
        print(degraded_note(hits.degraded_reason), file=app.out.file)
    if not hits:
        print(f"no results for {args.query!r} in {args.collection}", file=app.out.file)
        return 0
    app.out.print(search_table(hits, args.query, args.collection, ranks=args.ranks))
    return 0


def run_collections(app: App, args: argparse.Namespace) -> int:
    found = app.client.collections(timeout=app.timeout)
    if not found:
        print(
            "no collections yet (`askmojo ingest PATH --collection NAME` creates one)",
            file=app.out.file,
        )
        return 0
    app.out.print(collections_table(found))
    return 0


def run_stats(app: App, args: argparse.Namespace) -> int:
    stats = app.client.stats(args.collection or None, timeout=app.timeout)
    app.out.print(stats_table(stats, args.collection))
    return 0


def run_reconcile(app: App, args: argparse.Namespace) -> int:
    response = app.client.reconcile(args.collection, dry_run=args.dry_run, timeout=app.timeout)
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
    # Unusable TLS files are a usage error in one line (exit 2), named by
    # their flag, before any channel exists.
    refusal = tls.client_refusal(
        args.ca_file,
        args.cert_file,
        args.key_file,
        names=("--ca-file", "--cert-file", "--key-file"),
    )
    if refusal is not None:
        raise UsageError(refusal)
    out = Console(file=sys.stdout)
    err = Console(file=sys.stderr)
    try:
        client = Client(
            address,
            # "" rather than None: the parser already read ASKMOJO_API_KEY.
            api_key=args.api_key or "",
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            timeout=timeout,
        )
    except ValueError as exc:  # an address that is no address
        raise UsageError(f"--address (or METADATA_ADDRESS) {exc}") from None
    with client:
        app = App(address, timeout, client, out, err, run_timeout)
        try:
            return COMMANDS[args.command](app, args)
        except AskmojoError as exc:
            _fail(describe_rpc_error(exc.code.name, exc.message, address, timeout))
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
