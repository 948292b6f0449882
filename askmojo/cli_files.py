"""Finding and reading the files `askmojo ingest` sends.

Pure of any gRPC: walking yields paths lazily (a folder of a million files is
never held in memory), and reading turns one file into a `Document` or a
reason it cannot be one, so a bad file fails alone instead of ending the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from askmojo.client import Document, Metadata

TEXT_EXTENSIONS = frozenset({".md", ".txt"})
# Over this a file is refused before it is read: it could not fit in one
# request anyway (the services' MAX_MESSAGE_BYTES defaults to 64 MiB, and their
# MAX_TEXT_BYTES to 1 MiB), and reading it would only cost memory.
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    path: Path
    # The document id: the path relative to the folder given on the command
    # line (a file given directly: its name), always with '/' separators so the
    # same tree gets the same ids on every OS.
    doc_id: str


@dataclass
class WalkReport:
    """What a walk passed over, filled in as the walk goes."""

    # Files inside the given folders that are not .txt/.md (or not regular files).
    ignored: int = 0
    # Files named on the command line that are not .txt/.md.
    ignored_explicit: list[str] = field(default_factory=list)
    # (folder, reason) for folders that could not be listed.
    errors: list[tuple[str, str]] = field(default_factory=list)


def is_text_file(name: str) -> bool:
    return Path(name).suffix.lower() in TEXT_EXTENSIONS


def missing_paths(paths: Sequence[Path]) -> list[Path]:
    """Arguments that do not exist: a usage error, caught before any RPC."""
    return [p for p in paths if not p.exists()]


def iter_sources(paths: Sequence[Path], report: WalkReport) -> Iterator[SourceFile]:
    """The .txt/.md files under `paths`, in a stable (sorted) order. Hidden
    files and folders (".git", ".venv", ...) are skipped; symbolic links to
    folders are not followed, so a link loop cannot make the walk endless."""
    for root in paths:
        if not root.is_dir():
            if is_text_file(root.name):
                yield SourceFile(root, root.name)
            else:
                report.ignored_explicit.append(str(root))
            continue

        def on_error(exc: OSError, root: Path = root) -> None:
            where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else "."
            report.errors.append((f"{where}/", f"cannot list folder: {exc.strerror or exc}"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
            # Sorting in place also fixes the order os.walk descends in.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                path = Path(dirpath, name)
                # A FIFO or device named *.txt would block or never end: skip
                # anything that exists but is not a regular file. A dangling
                # link is kept, so that it is reported as unreadable.
                if not is_text_file(name) or (path.exists() and not path.is_file()):
                    report.ignored += 1
                    continue
                yield SourceFile(path, path.relative_to(root).as_posix())


def count_sources(paths: Sequence[Path]) -> int:
    """How many files iter_sources will yield (a walk without reading), so the
    progress bar has a total; it is only a hint if the tree changes meanwhile."""
    return sum(1 for _ in iter_sources(paths, WalkReport()))


def describe_decode_error(data: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"


def read_text(path: Path, max_bytes: int = MAX_FILE_BYTES) -> tuple[str, int] | str:
    """(text, size in bytes), or why the file cannot be sent."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return f"too large ({size} bytes; at most {max_bytes} are read)"
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return describe_decode_error(data, exc)
    if "\x00" in text:
        # Valid UTF-8 but binary all the same; no one searches for NUL bytes.
        return "binary file (contains NUL bytes)"
    # A byte-order mark is not text: it would end up in the first chunk.
    return text.removeprefix("\ufeff"), len(data)


def to_document(source: SourceFile, text: str, size: int) -> Document:
    extension = Path(source.doc_id).suffix.lower().removeprefix(".")
    metadata: Metadata = {"source": source.doc_id, "extension": extension, "bytes": size}
    return Document(id=source.doc_id, text=text, metadata=metadata)


def load_document(source: SourceFile, max_bytes: int = MAX_FILE_BYTES) -> Document | str:
    """The document for `source`, or why it is not one."""
    outcome = read_text(source.path, max_bytes)
    if isinstance(outcome, str):
        return outcome
    text, size = outcome
    return to_document(source, text, size)
