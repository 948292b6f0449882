"""Properties of `chunk_text`, checked on hand-picked cases and on a few
hundred texts from a seeded generator (no hypothesis: plain, reproducible)."""

from __future__ import annotations

import itertools
import random
import string

import pytest

from metadata_service.chunking import Chunk, chunk_text

SETTINGS = [(1, 0), (2, 1), (7, 0), (7, 3), (16, 0), (16, 8), (40, 10), (64, 0), (100, 99)]
SENTENCE_MARKS = ".!?"

# Characters str.isspace() and re's \s both count as whitespace, beyond ASCII.
_ODD_SPACES = ["\u00a0", "\u3000", "\u2028", "\r", "\t", "\f"]
# Letters of several scripts (\u0627 is Arabic alef) and a combining accent.
_UNICODE_WORD_CHARS = ["é", "ß", "漢", "字", "😀", "🚀", "ж", "\u0627", "\u0301"]


def _word(rng: random.Random, max_len: int) -> str:
    alphabet = string.ascii_letters + string.digits + "".join(_UNICODE_WORD_CHARS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, max_len)))


def _separator(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.70:
        return " "
    if roll < 0.80:
        return " " * rng.randint(2, 4)
    if roll < 0.87:
        return "\n"
    if roll < 0.92:
        return "\n\n" if rng.random() < 0.5 else "\n  \n\t"
    return rng.choice(_ODD_SPACES)


def _prose(rng: random.Random, words: int, max_word: int) -> str:
    """Words with punctuation and assorted whitespace between them."""
    parts = [rng.choice(["", "", " ", "\n", "  \t"])]
    for i in range(words):
        parts.append(_word(rng, max_word))
        roll = rng.random()
        if roll < 0.15:
            parts.append(rng.choice(SENTENCE_MARKS))
        elif roll < 0.25:
            parts.append(rng.choice(";:,"))
        if i < words - 1:
            parts.append(_separator(rng))
    parts.append(rng.choice(["", "", " ", "\n", "  \n "]))
    return "".join(parts)


def _noise(rng: random.Random, length: int) -> str:
    """Any mix of letters, punctuation and whitespace, including long runs of
    either, so boundaries fall anywhere in a window."""
    alphabet = [*string.ascii_letters[:6], ".", "!", ",", ";", " ", "\n", *_ODD_SPACES[:2]]
    alphabet += ["漢", "😀"]
    return "".join(rng.choice(alphabet) for _ in range(length))


def _random_texts() -> list[str]:
    rng = random.Random(20240611)
    texts = [_prose(rng, rng.randint(1, 120), rng.randint(1, 15)) for _ in range(150)]
    texts += [_noise(rng, rng.randint(0, 400)) for _ in range(100)]
    texts += [_word(rng, 300) for _ in range(10)]
    return texts


RANDOM_TEXTS = _random_texts()


def assert_chunk_invariants(text: str, size: int, overlap: int, chunks: list[Chunk]) -> None:
    """The properties every chunking of every text must have."""
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= size
        assert not chunk.text[0].isspace()
        assert not chunk.text[-1].isspace()
    for previous, following in itertools.pairwise(chunks):
        assert previous.start < following.start
        assert previous.end - following.start <= overlap
        if overlap == 0:
            assert following.start >= previous.end
    covered = bytearray(len(text))
    for chunk in chunks:
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
    missed = [i for i, char in enumerate(text) if not char.isspace() and not covered[i]]
    assert missed == [], f"uncovered positions {missed[:10]}"
    if not text.strip():
        assert chunks == []
    else:
        assert chunks


# --- arguments and trivial texts ---------------------------------------------


@pytest.mark.parametrize(
    ("size", "overlap"),
    [(0, 0), (-1, 0), (10, 10), (10, 11), (10, -1), (1, 1), (0, -1)],
)
def test_invalid_settings_raise_value_error(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap < size"):
        chunk_text("some text", size, overlap)


def test_invalid_settings_raise_even_for_empty_text() -> None:
    with pytest.raises(ValueError):
        chunk_text("", 0, 0)


@pytest.mark.parametrize("text", ["", " ", "   ", "\n\n", " \t\n\r\f\v", "\u3000\u00a0\u2028"])
@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (10, 3)])
def test_empty_and_whitespace_only_text_give_no_chunks(text: str, size: int, overlap: int) -> None:
    assert chunk_text(text, size, overlap) == []


def test_short_text_is_one_stripped_chunk() -> None:
    text = "  \n Hello, world!  \n"
    assert chunk_text(text, 100, 10) == [Chunk(0, "Hello, world!", 4, 17)]


def test_text_exactly_size_long_is_one_chunk() -> None:
    text = "abcde fghij"
    assert chunk_text(text, len(text), 0) == [Chunk(0, text, 0, len(text))]


def test_size_one_gives_one_chunk_per_visible_character() -> None:
    text = "ab c\nd"
    chunks = chunk_text(text, 1, 0)
    assert [(c.text, c.start) for c in chunks] == [("a", 0), ("b", 1), ("c", 3), ("d", 5)]


# --- the documented cut points -----------------------------------------------


def test_long_word_without_spaces_is_cut_into_contiguous_pieces() -> None:
    text = "x" * 1000
    chunks = chunk_text(text, 64, 8)
    assert_chunk_invariants(text, 64, 8, chunks)
    # No word start to back up to inside the overlap: pieces just follow on.
    assert [(c.start, c.end) for c in chunks] == [
        (i, min(i + 64, 1000)) for i in range(0, 1000, 64)
    ]


@pytest.mark.parametrize("overlap", [0, 5, 20])
def test_sentences_end_chunks_at_full_stops(overlap: int) -> None:
    text = " ".join(["Word word word."] * 30)
    chunks = chunk_text(text, 50, overlap)
    assert_chunk_invariants(text, 50, overlap, chunks)
    for chunk in chunks:
        assert chunk.text.endswith("word."), chunk
        assert chunk.text.startswith(("Word", "word")), chunk


def test_sentence_ending_exactly_at_window_edge_is_used() -> None:
    # "aaaa. bbbb." is exactly 11 characters; the space after it lies just
    # outside the window, and the chunk must still end at that full stop.
    chunks = chunk_text("aaaa. bbbb. cccc. dddd.", 11, 0)
    assert [c.text for c in chunks] == ["aaaa. bbbb.", "cccc. dddd."]


def test_paragraph_break_beats_a_later_sentence_end() -> None:
    text = "First paragraph has words.\n\nSecond one. More. Even more words here."
    chunks = chunk_text(text, 40, 0)
    assert chunks[0].text == "First paragraph has words."
    assert chunks[1].start == text.index("Second")


def test_line_break_beats_a_later_sentence_end() -> None:
    text = "aaaa bbbb cccc\ndddd. eeee ffff gggg hhhh"
    chunks = chunk_text(text, 24, 0)
    assert chunks[0].text == "aaaa bbbb cccc"


def test_sentence_end_beats_a_later_clause_mark_and_word_break() -> None:
    text = "One two three four. Five six, seven eight nine ten"
    chunks = chunk_text(text, 30, 0)
    assert chunks[0].text == "One two three four."


def test_clause_mark_beats_a_later_word_break() -> None:
    text = "alpha beta gamma; delta epsilon zeta eta theta"
    chunks = chunk_text(text, 28, 0)
    assert chunks[0].text == "alpha beta gamma;"


def test_boundary_in_first_half_of_window_is_ignored() -> None:
    # The only full stop is in the first half, so the chunk ends at the last
    # space of the window instead of coming out tiny.
    text = "Hi. aaaa bbbb cccc dddd eeee ffff gggg"
    chunks = chunk_text(text, 30, 0)
    assert chunks[0].text == "Hi. aaaa bbbb cccc dddd eeee"


def test_closing_quotes_stay_with_their_sentence() -> None:
    text = 'He said "stop it now." Then left the room quickly and never came back.'
    chunks = chunk_text(text, 30, 0)
    assert chunks[0].text == 'He said "stop it now."'


def test_overlap_backs_up_to_the_first_sentence_start_inside_it() -> None:
    text = "Aaaa bbbb. Cccc dddd. Eeee ffff. Gggg hhhh. Iiii jjjj."
    chunks = chunk_text(text, 32, 16)
    assert chunks[0].text == "Aaaa bbbb. Cccc dddd. Eeee ffff."
    # The overlap window starts inside "dddd."; the first sentence start
    # after that is "Eeee".
    assert chunks[1].start == text.index("Eeee")
    assert chunks[1].text.startswith("Eeee ffff.")


def test_overlap_falls_back_to_a_word_start() -> None:
    text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh"
    chunks = chunk_text(text, 20, 8)
    assert chunks[0].text == "aaaa bbbb cccc dddd"
    assert chunks[1].start == text.index("dddd")


def test_overlap_zero_continues_right_after_the_boundary() -> None:
    text = "aaaa bbbb cccc dddd eeee ffff gggg hhhh"
    chunks = chunk_text(text, 20, 0)
    assert [c.text for c in chunks] == ["aaaa bbbb cccc dddd", "eeee ffff gggg hhhh"]


@pytest.mark.parametrize("tail", ["\n", "  ", "\n\n\t ", "\u3000"])
@pytest.mark.parametrize("overlap", [0, 5])
def test_trailing_whitespace_adds_no_chunk(tail: str, overlap: int) -> None:
    # The last window reaches into the trailing whitespace: it is the last
    # chunk, not followed by a repeat of its own end.
    text = "aaaa bbbb cccc dddd"
    assert chunk_text(text + tail, len(text), overlap) == [Chunk(0, text, 0, len(text))]
    assert chunk_text(text + tail, 15, overlap) == chunk_text(text, 15, overlap)


# --- properties over many generated texts ------------------------------------


@pytest.mark.parametrize(("size", "overlap"), SETTINGS)
def test_invariants_hold_for_generated_texts(size: int, overlap: int) -> None:
    # Tiny windows make hundreds of chunks per text: a sample is plenty.
    for text in RANDOM_TEXTS if size > 2 else RANDOM_TEXTS[::5]:
        assert_chunk_invariants(text, size, overlap, chunk_text(text, size, overlap))


def test_invariants_hold_for_random_settings() -> None:
    rng = random.Random(7)
    for text in RANDOM_TEXTS:
        size = rng.randint(1, 200)
        overlap = rng.randint(0, size - 1)
        assert_chunk_invariants(text, size, overlap, chunk_text(text, size, overlap))


@pytest.mark.parametrize(("size", "overlap"), [(16, 0), (16, 5), (40, 0), (40, 15), (101, 50)])
def test_no_chunk_starts_or_ends_mid_word_when_words_are_short(size: int, overlap: int) -> None:
    """When every word is shorter than half a window there is always a space
    to cut at, so no word is ever split."""
    rng = random.Random(size * 1000 + overlap)
    for _ in range(60):
        text = _prose(rng, rng.randint(1, 80), size // 2 - 2)
        chunks = chunk_text(text, size, overlap)
        assert_chunk_invariants(text, size, overlap, chunks)
        for chunk in chunks:
            assert chunk.start == 0 or text[chunk.start - 1].isspace(), (text, chunk)
            assert chunk.end == len(text) or text[chunk.end].isspace(), (text, chunk)


@pytest.mark.parametrize(("size", "overlap"), [(16, 0), (16, 6), (40, 18), (101, 48)])
def test_every_chunk_reaches_past_the_previous_one(size: int, overlap: int) -> None:
    """With overlap below half a window and single spaces between words, no
    chunk lies wholly inside its predecessor (it would add nothing)."""
    rng = random.Random(size * 7 + overlap)
    for _ in range(60):
        text = " ".join(_word(rng, size // 2 - 2) for _ in range(rng.randint(1, 80)))
        chunks = chunk_text(text + rng.choice(["", " ", "\n"]), size, overlap)
        for previous, following in itertools.pairwise(chunks):
            assert previous.end < following.end, (text, previous, following)


def _sentence_text(rng: random.Random, max_word: int) -> str:
    sentences = []
    for _ in range(rng.randint(1, 25)):
        words = [_word(rng, max_word) for _ in range(rng.randint(1, 6))]
        sentences.append(" ".join(words) + rng.choice(SENTENCE_MARKS))
    return " ".join(sentences)


@pytest.mark.parametrize(("size", "overlap"), [(20, 0), (20, 6), (48, 0), (48, 20), (90, 30)])
def test_chunk_ends_at_last_sentence_end_in_second_half_of_window(size: int, overlap: int) -> None:
    rng = random.Random(size + 31 * overlap)
    for _ in range(80):
        text = _sentence_text(rng, 6)
        chunks = chunk_text(text, size, overlap)
        assert_chunk_invariants(text, size, overlap, chunks)
        for chunk in chunks:
            limit = chunk.start + size
            if limit >= len(text):
                assert chunk.end == len(text)
                continue
            floor = chunk.start + size // 2
            # Sentence ends q (just after a mark, followed by a space) whose
            # mark lies in the second half of the window.
            ends = [
                q
                for q in range(floor + 1, limit + 1)
                if text[q - 1] in SENTENCE_MARKS and text[q].isspace()
            ]
            if ends:
                assert chunk.end == ends[-1], (text, chunk)


@pytest.mark.parametrize(("size", "overlap"), [(30, 0), (30, 10), (64, 16)])
def test_chunk_ends_at_last_paragraph_break_in_second_half_of_window(
    size: int, overlap: int
) -> None:
    rng = random.Random(size - overlap)
    for _ in range(60):
        paragraphs = [
            " ".join(_word(rng, 5) for _ in range(rng.randint(1, 8))) + rng.choice(".!?,")
            for _ in range(rng.randint(1, 8))
        ]
        text = "\n\n".join(paragraphs)
        chunks = chunk_text(text, size, overlap)
        assert_chunk_invariants(text, size, overlap, chunks)
        for chunk in chunks:
            limit = chunk.start + size
            if limit >= len(text):
                continue
            floor = chunk.start + size // 2
            breaks = [
                p for p in range(floor, limit) if text[p] == "\n" and text[p + 1 : p + 2] == "\n"
            ]
            if breaks:
                assert chunk.end == breaks[-1], (text, chunk)


# --- determinism and unicode -------------------------------------------------


@pytest.mark.parametrize(("size", "overlap"), [(7, 3), (40, 10)])
def test_same_input_gives_same_chunks(size: int, overlap: int) -> None:
    for text in RANDOM_TEXTS[::10]:
        assert chunk_text(text, size, overlap) == chunk_text(text, size, overlap)


def test_known_output_is_stable() -> None:
    # Vector ids derive from chunks: a change here re-embeds every document.
    text = "The quick brown fox. It jumps over the lazy dog!\nAnd then, it sleeps."
    assert [c.text for c in chunk_text(text, 30, 10)] == [
        "The quick brown fox.",
        "fox. It jumps over the lazy",
        "the lazy dog!\nAnd then,",
        "And then, it sleeps.",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "日本語のテキストです。" * 20,
        "😀🚀🎉 " * 50,
        "Привет, мир! Как дела? " * 10,
        "مرحبا بالعالم. " * 12,
        "e\u0301 " * 40,
        "中文 English 混合 text。 " * 15,
    ],
)
@pytest.mark.parametrize(("size", "overlap"), [(1, 0), (10, 3), (33, 0)])
def test_unicode_text(text: str, size: int, overlap: int) -> None:
    chunks = chunk_text(text, size, overlap)
    assert_chunk_invariants(text, size, overlap, chunks)
    # Sizes count code points, not bytes.
    assert all(len(c.text) <= size for c in chunks)


def test_cjk_sentence_end_followed_by_space_is_a_boundary() -> None:
    text = "一二三四五六。 七八九十一二。 三四五六七八。"
    chunks = chunk_text(text, 10, 0)
    assert chunks[0].text == "一二三四五六。"
    assert chunks[1].start == text.index("七")


def test_cjk_sentence_end_without_space_is_a_boundary() -> None:
    text = "一二三四五六。七八九十一二。三四五六七八。"
    chunks = chunk_text(text, 10, 0)
    assert chunks[0].text == "一二三四五六。"
