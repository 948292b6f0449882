"""A small corpus of the kinds of files `askmojo ingest` meets, and a runner
for the CLI in-process (its output captured)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from askmojo import cli


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


Runner = Callable[..., Outcome]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Runner:
    def run(*argv: str) -> Outcome:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "wal.md").write_text(
        "# Write-ahead logging\n\nSQLite in WAL mode lets readers and one writer work "
        "at the same time.\n"
    )
    (root / "grpc.txt").write_text("gRPC streams carry batches of messages in both directions.\n")
    (root / "nested" / "cats.md").write_text("Cats purr when they are content and relaxed.\n")
    (root / "nested" / "deeper" / "chroma.txt").write_text(
        "Chroma keeps embedding vectors and finds the nearest neighbours of a query.\n"
    )
    # Not UTF-8: reported as failed, the others go on.
    (root / "nested" / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    # Not .txt/.md: ignored.
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return root


CORPUS_IDS = ["grpc.txt", "nested/cats.md", "nested/deeper/chroma.txt", "wal.md"]
