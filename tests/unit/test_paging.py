"""Page tokens: what goes in comes out, and anything else is INVALID_ARGUMENT
on the right field, never a crash."""

from __future__ import annotations

import base64
import json
import random
import string

import pytest

from metadata_service.errors import InvalidArgument
from metadata_service.paging import decode_page_token, encode_page_token, query_fingerprint

FINGERPRINT = query_fingerprint("collection", None, frozenset())


def _b64(raw: bytes, *, strip: bool = True) -> str:
    token = base64.urlsafe_b64encode(raw).decode()
    return token.rstrip("=") if strip else token


def _json_token(payload: object) -> str:
    return _b64(json.dumps(payload).encode())


def assert_refused(token: str, fingerprint: str = FINGERPRINT, field: str = "page_token") -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_page_token(token, fingerprint, field)
    assert [f for f, _ in info.value.violations] == [field]
    description = info.value.violations[0][1]
    assert description
    return description


# --- round trip --------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "doc-1", "a" * 600, "héllo 漢字 😀", "with\nnewline", '"quotes" and \\', "=+/?&"],
)
def test_round_trip(key: str) -> None:
    token = encode_page_token(key, FINGERPRINT)
    assert decode_page_token(token, FINGERPRINT) == key


def test_token_is_url_safe_and_unpadded() -> None:
    rng = random.Random(3)
    for _ in range(50):
        key = "".join(rng.choice(string.printable + "漢😀") for _ in range(rng.randint(0, 40)))
        token = encode_page_token(key, FINGERPRINT)
        assert set(token) <= set(string.ascii_letters + string.digits + "-_"), token
        assert decode_page_token(token, FINGERPRINT) == key


def test_encoding_is_deterministic() -> None:
    assert encode_page_token("k", FINGERPRINT) == encode_page_token("k", FINGERPRINT)


def test_padded_token_is_accepted_too() -> None:
    token = encode_page_token("doc-17", FINGERPRINT)
    padded = token + "=" * (-len(token) % 4)
    assert decode_page_token(padded, FINGERPRINT) == "doc-17"


@pytest.mark.parametrize("fingerprint", [FINGERPRINT, "x"])
def test_empty_token_means_first_page(fingerprint: str) -> None:
    assert decode_page_token("", fingerprint) is None


# --- fingerprints ------------------------------------------------------------


def test_fingerprint_is_stable_and_short() -> None:
    assert query_fingerprint("c", 1) == query_fingerprint("c", 1)
    assert len(query_fingerprint("c", 1)) == 16


@pytest.mark.parametrize(
    "other",
    [("c2", None), ("c", "filter"), ("c", None, "extra"), ("c",), (None, "c")],
)
def test_fingerprint_differs_with_the_query(other: tuple[object, ...]) -> None:
    assert query_fingerprint("c", None) != query_fingerprint(*other)


def test_token_from_another_query_is_refused() -> None:
    token = encode_page_token("doc-5", query_fingerprint("c", "filter a"))
    description = assert_refused(token, query_fingerprint("c", "filter b"))
    assert "different query" in description


def test_custom_field_name_is_reported() -> None:
    token = encode_page_token("doc-5", "other")
    assert_refused(token, FINGERPRINT, field="request.page_token")


# --- malformed tokens --------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "!",
        "====",
        "a",
        "abcde",
        "not a token",
        "%%%%",
        "漢字😀",
        "\x00\x01",
        _b64(b"not json"),
        _b64(b"\xff\xfe\xfd invalid utf-8"),
        _b64(b"{"),
        _b64(b"null"),
        _b64(b"42"),
        _b64(b'"a string"'),
        _b64(b"[1, 2, 3]"),
        _b64(b"[" * 50_000 + b"]" * 50_000),
        _b64(b'{"v": 1, "k": "x"}'),
        _b64(b'{"v": 1, "q": "x"}'),
        _b64(b'{"k": "x", "q": "x"}'),
        _b64(b"{}"),
        _b64(b'{"V": 1, "K": "x", "Q": "x"}'),
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert "malformed" in assert_refused(token)


@pytest.mark.parametrize(
    "payload",
    [
        {"v": 2, "k": "x", "q": FINGERPRINT},
        {"v": 0, "k": "x", "q": FINGERPRINT},
        {"v": "1", "k": "x", "q": FINGERPRINT},
        {"v": None, "k": "x", "q": FINGERPRINT},
    ],
)
def test_tokens_of_other_versions_are_refused(payload: dict[str, object]) -> None:
    assert "version" in assert_refused(_json_token(payload))


@pytest.mark.parametrize(
    "key", [17, None, ["x"], "a\x00b", "k" * 1025], ids=["int", "null", "list", "nul", "long"]
)
def test_keys_no_page_could_end_with_are_refused(key: object) -> None:
    """A crafted key must never reach SQL (PostgreSQL rejects NUL, for one)."""
    assert "malformed" in assert_refused(_json_token({"v": 1, "k": key, "q": FINGERPRINT}))


def test_well_formed_payload_with_other_fingerprint_type_is_refused() -> None:
    assert_refused(_json_token({"v": 1, "k": "x", "q": 12345}))
    assert_refused(_json_token({"v": 1, "k": "x", "q": None}))


def test_extra_keys_are_ignored() -> None:
    token = _json_token({"v": 1, "k": "doc", "q": FINGERPRINT, "extra": [1]})
    assert decode_page_token(token, FINGERPRINT) == "doc"


def test_random_garbage_is_refused() -> None:
    rng = random.Random(1234)
    alphabet = string.printable + "漢字😀é\u0000"
    for _ in range(300):
        garbage = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        assert_refused(garbage)


def test_random_bytes_behind_valid_base64_are_refused() -> None:
    rng = random.Random(99)
    for _ in range(300):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 60)))
        assert_refused(_b64(raw))


def test_truncated_and_altered_tokens_are_refused() -> None:
    token = encode_page_token("doc-123456", FINGERPRINT)
    for cut in range(1, len(token)):
        assert_refused(token[:cut])
    rng = random.Random(5)
    for _ in range(200):
        position = rng.randrange(len(token))
        replacement = rng.choice(string.ascii_letters + string.digits + "-_")
        altered = token[:position] + replacement + token[position + 1 :]
        try:
            key = decode_page_token(altered, FINGERPRINT)
        except InvalidArgument as exc:
            assert [f for f, _ in exc.violations] == ["page_token"]
        else:
            # Flipping a character may leave valid JSON with another key;
            # it must still be a string.
            assert isinstance(key, str)
