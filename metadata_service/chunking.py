"""Boundary-aware chunking of document text.

A chunk ends at the strongest boundary found in the second half of its window:
a blank line, then a line break, then the end of a sentence, then a clause
mark, then any whitespace; only text without any boundary is cut mid-word.
The next chunk starts up to `overlap` characters earlier, at the first sentence
(or else word) start inside that overlap, so no chunk begins mid-word.

Chunks are exact slices of the text (`text[start:end]`), so a search hit can
be located in its document. Pure and deterministic: the same text and
settings always give the same chunks, which keeps vector ids stable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
