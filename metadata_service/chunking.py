"""Boundary-aware chunking of document text.

A chunk ends at the strongest boundary found in the second half of its window:
a blank line, then a line break, then the end of a sentence, then a clause
mark, then any whitespace; only text without any boundary is cut mid-word.
The next chunk starts up to `overlap` characters earlier, at the first sentence
(or else word) start inside that overlap, so no chunk begins mid-word.

Chunks are exact slices of the text (`text[start:end]`), so a search hit can
be located in its document; the one exception is a later fragment of a
Markdown table split by `chunk_tokens`, whose text is the table's header row
and separator line followed by its own slice (`text[start:end]`), so every
fragment says what its columns are. Pure and deterministic: the same text and
settings always give the same chunks, which keeps vector ids stable.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import re
from dataclasses import dataclass
from typing import Protocol

# Strongest first. A match's end is where the next chunk may begin.
_END_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    # Latin sentence ends need the space after them ("3.14", "e.g" are not
    # ends); CJK full stops, exclamation and question marks are ends as they stand.
    re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f][\u300d\u300f\u201d)]*\s*"),
    re.compile(r"[;:,]\s+"),
    re.compile(r"\s+"),
)
_START_BOUNDARIES = (_END_BOUNDARIES[2], _END_BOUNDARIES[4])


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    # What is stored, indexed and embedded: `text[start:end]` of the document,
    # or (a later fragment of a split table) its header then that slice.
    text: str
    start: int
    end: int


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Cuts `text` into chunks of at most `size` characters (whitespace-only
    text gives none). Requires 0 <= overlap < size."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
    chunks: list[Chunk] = []
    # Trailing whitespace is no content: a window reaching into it must count
    # as the last one, or the next would repeat the end of this one.
    length = _strip_end(text, 0, len(text))
    start = _skip_space(text, 0)
    while start < length:
        limit = start + size
        end = length if limit >= length else _end_before(text, start, limit)
        stop = _strip_end(text, start, end)
        chunks.append(Chunk(len(chunks), text[start:stop], start, stop))
        if end >= length:
            break
        start = _skip_space(text, _next_start(text, start, end, overlap))
    return chunks


def _end_before(text: str, start: int, limit: int) -> int:
    """The end of the window [start, limit) at its strongest boundary; boundaries
    in the first half are ignored so chunks do not come out tiny."""
    floor = start + (limit - start) // 2
    for pattern in _END_BOUNDARIES:
        best = -1
        # One character past the window: a boundary whose whitespace starts
        # right at `limit` (a sentence ending exactly at the edge) still counts.
        for match in pattern.finditer(text, floor, limit + 1):
            best = match.end()
        if best > floor:
            return min(best, limit)
    return limit


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    if overlap == 0:
        return end
    floor = max(end - overlap, start + 1)
    for pattern in _START_BOUNDARIES:
        match = pattern.search(text, floor - 1, end)
        if match is not None and floor <= match.end() < end:
            return match.end()
    return end


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _strip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


# --- token-true, structure-aware chunking ---------------------------------------


class TokenOffsets(Protocol):
    """A model's tokenizer as the chunker needs it (metadata_service/tokenizer.py)."""

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """The character span of every token of `text`, special tokens excluded."""
        ...

    def count(self, text: str) -> int:
        """Tokens of `text` alone, special tokens excluded."""
        ...


# A Markdown heading (ATX: `#` to `######` then a space), a table row, a fence.
_HEADING = re.compile(r"#{1,6}(?:[ \t]|$)")
_TABLE_ROW = re.compile(r"[ \t]{0,3}\|")
_TABLE_SEPARATOR = re.compile(r"[ \t]{0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_FENCE = re.compile(r"[ \t]{0,3}(```|~~~)")


def sections(text: str) -> list[tuple[int, int, bool]]:
    """The spans no chunk crosses: a Markdown heading line starts a new one
    (with its heading at its head, the section's own title), and a Markdown
    table (a header row, a `|---|` separator, rows) is one on its own, so a
    chunk is never half table and half prose. Inside a fenced code block
    nothing counts (a shell `# comment` is no heading). Text without Markdown
    structure is one span. Each span: (start, end, whether it is a table)."""
    cuts = {0}
    tables: set[int] = set()
    fence: str | None = None
    table = False
    pos = 0
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        fenced = _FENCE.match(line)
        if fence is not None:
            if fenced is not None and fenced.group(1) == fence:
                fence = None
        elif fenced is not None:
            fence = fenced.group(1)
            table = False
        elif table:
            if not _TABLE_ROW.match(line):
                table = False
                cuts.add(pos)
        elif _HEADING.match(line):
            cuts.add(pos)
        elif (
            _TABLE_ROW.match(line)
            and index + 1 < len(lines)
            and _TABLE_SEPARATOR.match(lines[index + 1].rstrip("\n"))
        ):
            table = True
            cuts.add(pos)
            tables.add(pos)
        pos += len(line)
    bounds = [*sorted(cuts), len(text)]
    return [(a, b, a in tables) for a, b in itertools.pairwise(bounds) if text[a:b].strip()]


def chunk_tokens(
    text: str,
    size: int,
    overlap: int,
    tokenizer: TokenOffsets,
    *,
    structure: bool = True,
    table_headers: bool = True,
    headings: bool = False,
) -> list[Chunk]:
    """Cuts `text` into chunks of at most `size` tokens of the model's own
    tokenizer (special tokens not counted: the caller keeps `size` within the
    window less them), with `overlap` tokens repeated, inside the spans of
    `sections`. Boundaries are chosen as `chunk_text` chooses them (blank
    line, line break, sentence, clause, word), so a table too long for one
    chunk splits between rows, and every fragment starts with the table's
    header row and separator line (`_chunk_headed`). Each chunk's token
    count is checked by tokenizing its text itself: a word cut in two can
    take more tokens than its pieces did in place, and no chunk may pass the
    model's window. Pure and deterministic.

    For the evaluation (evals/hybrid.py) only: `structure=False` chunks the
    whole text as one span, `table_headers=False` splits tables without
    repeating their header, `headings=True` repeats a section's heading line
    at the head of each of its later chunks too."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
    spans = tokenizer.offsets(text)
    starts = [s for s, _ in spans]
    chunks: list[Chunk] = []
    for first, last, table in sections(text) if structure else [(0, len(text), False)]:
        lo = bisect.bisect_left(starts, first)
        hi = bisect.bisect_left(starts, last)
        # Table rows are cut whole: no overlap, which would start mid-row.
        step = 0 if table else overlap
        section = spans[lo:hi]
        head_lines = 2 if table and table_headers else 0
        if headings and not table and _HEADING.match(text, first):
            head_lines = 1
        if head_lines and len(section) > size:
            fragments = _chunk_headed(
                text, section, size=size, overlap=step, head_lines=head_lines, tokenizer=tokenizer
            )
            if fragments is not None:
                base = len(chunks)
                chunks += [
                    dataclasses.replace(c, ordinal=base + i) for i, c in enumerate(fragments)
                ]
                continue
        _chunk_section(text, section, chunks, size=size, overlap=step, tokenizer=tokenizer)
    return chunks


def _chunk_headed(
    text: str,
    spans: list[tuple[int, int]],
    *,
    size: int,
    overlap: int,
    head_lines: int,
    tokenizer: TokenOffsets,
) -> list[Chunk] | None:
    """A section too long for one chunk, each chunk headed by the section's
    first `head_lines` lines: a table's header row and separator line (a
    fragment of rows alone does not say what its columns mean: the README's
    status table, split after its sixth row, left "vector service away |
    UNAVAILABLE" without "situation | status"), or a heading. The first
    chunk is the exact slice from the head on; later ones store the head, a
    line break, then their own text (`text[start:end]`), within `size`
    tokens in all. None when the head takes more than half the size (a
    table that wide is split as any text is)."""
    first = spans[0][0]
    head_end = first
    for _ in range(head_lines):
        newline = text.find("\n", head_end)
        if newline < 0:
            return None
        head_end = newline + 1
    head = text[first:head_end].rstrip()
    # The head, its line break, and a chunk's text (starting at a token
    # after whitespace) tokenize apart: their tokens add up.
    head_tokens = tokenizer.count(head)
    body = bisect.bisect_left([s for s, _ in spans], head_end)
    if head_tokens > size // 2 or body >= len(spans):
        return None
    fragments: list[Chunk] = []
    _chunk_section(
        text,
        spans[body:],
        fragments,
        size=size - head_tokens,
        overlap=min(overlap, (size - head_tokens) // 2),
        tokenizer=tokenizer,
    )
    out: list[Chunk] = []
    for fragment in fragments:
        if not out:
            out.append(Chunk(0, text[first : fragment.end], first, fragment.end))
        else:
            out.append(Chunk(0, head + "\n" + fragment.text, fragment.start, fragment.end))
    return out


def _chunk_section(
    text: str,
    spans: list[tuple[int, int]],
    chunks: list[Chunk],
    *,
    size: int,
    overlap: int,
    tokenizer: TokenOffsets,
) -> None:
    starts = [s for s, _ in spans]
    i = 0
    while i < len(spans):
        start = spans[i][0]
        if i + size >= len(spans):
            end = spans[-1][1]
            last = True
        else:
            # Any end up to where the first token past the window starts
            # holds at most `size` tokens (in place).
            limit = spans[i + size][0]
            floor = spans[i + size // 2][0]
            end = _end_between(text, floor, limit)
            last = False
        stop = _strip_end(text, start, end)
        # A slice from a word start to whitespace (or the end) is split into
        # the words it had in place, so it has the tokens counted in place
        # (at most `size`). Cut elsewhere (inside a word), in place is not
        # alone: re-tokenize the slice and give back whole tokens until it
        # fits.
        clean = stop == len(text) or text[stop].isspace()
        while not clean and tokenizer.count(text[start:stop]) > size:
            k = bisect.bisect_left(starts, stop) - 1
            shorter = _strip_end(text, start, spans[k][0]) if k > i else spans[i][1]
            if shorter >= stop:
                break
            stop = shorter
            last = False
        chunks.append(Chunk(len(chunks), text[start:stop], start, stop))
        if last:
            return
        # The first token not in this chunk, then back `overlap` tokens to a
        # sentence (else word) start.
        k = bisect.bisect_left(starts, stop)
        if k >= len(spans):
            return
        floor_token = max(k - overlap, i + 1)
        nxt = starts[k]
        if overlap:
            floor = starts[floor_token]
            for pattern in _START_BOUNDARIES:
                match = pattern.search(text, floor - 1, nxt)
                if match is not None and floor <= match.end() < nxt:
                    nxt = match.end()
                    break
        i = max(bisect.bisect_left(starts, _skip_space(text, nxt)), i + 1)


def _end_between(text: str, floor: int, limit: int) -> int:
    """The strongest boundary ending in (floor, limit], else `limit`."""
    for pattern in _END_BOUNDARIES:
        best = -1
        for match in pattern.finditer(text, floor, limit + 1):
            if match.end() <= limit:
                best = match.end()
        if best > floor:
            return best
    return limit
