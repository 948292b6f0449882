"""Token-true, structure-aware chunking (issue #14) with the packaged model's
own tokenizer: no chunk passes the window, chunks are exact slices, Markdown
headings start chunks, tables are chunked on their own between rows."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from metadata_service.chunking import chunk_tokens, sections
from metadata_service.tokenizer import ModelTokenizer, tokenizer_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    found = tokenizer_for("all-MiniLM-L6-v2")
    assert found is not None
    return found


def test_window_of_the_packaged_model(tokenizer: ModelTokenizer) -> None:
    assert (tokenizer.window, tokenizer.special_tokens, tokenizer.max_chunk_tokens) == (256, 2, 254)
    assert tokenizer_for("some-other-model") is None


TEXTS = {
    "readme": (ROOT / "README.md").read_text(),
    "prose": (ROOT / "../shared/DESIGN.md").read_text()
    if (ROOT / "../shared/DESIGN.md").exists()
    else (ROOT / "README.md").read_text(),
    # Words longer than a window and no spaces: cut inside words, where the
    # pieces take more tokens alone than in place.
    "no spaces": "x" + "".join(f"supercalifragilistic{i}ünïcödé" for i in range(400)),
    "cjk": "機械学習は人工知能の一分野である。" * 200,
    "mixed": ("Sentence one. " * 30 + "\n\n") * 10 + "| a | b |\n|---|---|\n" + "| 1 | 2 |\n" * 300,
}


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize(("size", "overlap"), [(254, 0), (128, 16), (32, 8)])
def test_no_chunk_passes_its_size_and_chunks_are_exact_slices(
    tokenizer: ModelTokenizer, name: str, size: int, overlap: int
) -> None:
    text = TEXTS[name]
    chunks = chunk_tokens(text, size, overlap, tokenizer)
    assert chunks
    assert chunks == chunk_tokens(text, size, overlap, tokenizer)  # deterministic
    covered = 0
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip() == chunk.text
        assert 0 < tokenizer.count(chunk.text) <= size
        # Forward progress, and nothing is left out.
        assert chunk.start >= (chunks[ordinal - 1].start + 1 if ordinal else 0)
        assert not text[covered : chunk.start].strip()
        covered = max(covered, chunk.end)
    assert not text[covered:].strip()


def test_overlap_repeats_text_inside_a_paragraph(tokenizer: ModelTokenizer) -> None:
    text = " ".join(f"Sentence number {i} says something." for i in range(200))
    chunks = chunk_tokens(text, 64, 16, tokenizer)
    assert len(chunks) > 5
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start < a.end  # b starts inside a
        assert re.match(r"Sentence number \d+", b.text)  # at a sentence start


MARKDOWN = """# Title

Intro paragraph about the service.

## When the vector service is down

Writes still succeed and are indexed later. Search answers from keywords.

```sh
# a shell comment, no heading
echo hi
```

| situation | status |
| --- | --- |
| bad input | INVALID_ARGUMENT |
| unknown collection | NOT_FOUND |

After the table, prose again.
"""


def test_headings_start_chunks_and_tables_stand_alone(tokenizer: ModelTokenizer) -> None:
    spans = [(MARKDOWN[a:b].strip().split("\n")[0], table) for a, b, table in sections(MARKDOWN)]
    assert spans == [
        ("# Title", False),
        ("## When the vector service is down", False),
        ("| situation | status |", True),
        ("After the table, prose again.", False),
    ]
    chunks = chunk_tokens(MARKDOWN, 128, 16, tokenizer)
    assert [c.text.split("\n")[0] for c in chunks] == [s for s, _ in spans]
    assert chunks[2].text.endswith("| NOT_FOUND |")  # the table kept whole


def test_long_table_splits_between_rows(tokenizer: ModelTokenizer) -> None:
    rows = "".join(f"| row {i} | value {i} with several words |\n" for i in range(100))
    text = "Before.\n\n| name | value |\n| --- | --- |\n" + rows + "\nAfter.\n"
    chunks = chunk_tokens(text, 64, 16, tokenizer)
    table = [c for c in chunks if c.text.startswith("|")]
    assert len(table) > 3
    assert all(c.text.endswith("|") for c in table)
    # No overlap between table fragments: each row is in exactly one chunk.
    assert sum(c.text.count("\n") + 1 for c in table) == 102
    assert chunks[0].text == "Before." and chunks[-1].text == "After."
