"""Page tokens: what goes in comes out, signed; anything else — garbage, a
token altered or forged, one from another query or another deployment — is
the same INVALID_ARGUMENT on the right field, never a crash."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import string

import pytest

from metadata_service.errors import InvalidArgument
from metadata_service.paging import (
    PageTokens,
    document_bytes,
    largest_document_bytes,
    page_byte_budget,
    query_fingerprint,
)

FINGERPRINT = query_fingerprint("collection", None, frozenset())
SECRET = b"s" * 32
TOKENS = PageTokens(SECRET)


def _b64(raw: bytes, *, strip: bool = True) -> str:
    token = base64.urlsafe_b64encode(raw).decode()
    return token.rstrip("=") if strip else token


def assert_refused(
    token: str,
    fingerprint: str = FINGERPRINT,
    field: str = "page_token",
    tokens: PageTokens = TOKENS,
) -> None:
    with pytest.raises(InvalidArgument) as info:
        tokens.decode(token, fingerprint, field)
    assert [f for f, _ in info.value.violations] == [field]
    # One answer whatever is wrong: nothing tells a forger how close he came.
    assert str(info.value).startswith(f"{field} is not valid for this query")


# --- round trip --------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "doc-1", "a" * 600, "héllo 漢字 😀", "with\nnewline", '"quotes" and \\', "=+/?&"],
)
def test_round_trip(key: str) -> None:
    token = TOKENS.encode(key, FINGERPRINT)
    assert TOKENS.decode(token, FINGERPRINT) == key


def test_token_is_url_safe_and_unpadded() -> None:
    rng = random.Random(3)
    for _ in range(50):
        key = "".join(rng.choice(string.printable + "漢😀") for _ in range(rng.randint(0, 40)))
        token = TOKENS.encode(key, FINGERPRINT)
        assert set(token) <= set(string.ascii_letters + string.digits + "-_"), token
        assert TOKENS.decode(token, FINGERPRINT) == key


def test_encoding_is_deterministic() -> None:
    assert TOKENS.encode("k", FINGERPRINT) == TOKENS.encode("k", FINGERPRINT)


def test_padded_token_is_accepted_too() -> None:
    token = TOKENS.encode("doc-17", FINGERPRINT)
    padded = token + "=" * (-len(token) % 4)
    assert TOKENS.decode(padded, FINGERPRINT) == "doc-17"


@pytest.mark.parametrize("fingerprint", [FINGERPRINT, "x"])
def test_empty_token_means_first_page(fingerprint: str) -> None:
    assert TOKENS.decode("", fingerprint) is None


def test_another_instance_with_the_same_secret_accepts_it() -> None:
    """Workers and replicas of one deployment share the secret."""
    token = TOKENS.encode("doc-9", FINGERPRINT)
    assert PageTokens(bytes(SECRET)).decode(token, FINGERPRINT) == "doc-9"


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        PageTokens(b"short")


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
    token = TOKENS.encode("doc-5", query_fingerprint("c", "filter a"))
    assert_refused(token, query_fingerprint("c", "filter b"))


def test_custom_field_name_is_reported() -> None:
    token = TOKENS.encode("doc-5", "other")
    assert_refused(token, FINGERPRINT, field="request.page_token")


# --- forged and altered tokens ------------------------------------------------


def test_token_of_another_deployment_is_refused() -> None:
    token = PageTokens(b"t" * 32).encode("doc-5", FINGERPRINT)
    assert_refused(token)


def test_forged_unsigned_token_with_the_right_fingerprint_is_refused() -> None:
    """What version 1 accepted: base64 JSON naming any key, with the query's
    fingerprint (which a client can compute: the code is public)."""
    forged = _b64(json.dumps({"v": 1, "k": "zzz", "q": FINGERPRINT}).encode())
    assert_refused(forged)


def test_changed_key_with_the_old_signature_is_refused() -> None:
    raw = base64.urlsafe_b64decode(TOKENS.encode("doc-1", FINGERPRINT) + "==")
    assert_refused(_b64(raw[:-1] + b"9"))


def test_token_signed_without_the_secret_is_refused() -> None:
    """The right layout, signed under a guessed (empty-ish) key."""
    key = b"doc-999"
    message = b"askmojo page token\x00%d\x00%s\x00%s" % (2, FINGERPRINT.encode(), key)
    for guess in (b"", b"\x00" * 32, FINGERPRINT.encode()):
        mac = hmac.new(guess, message, hashlib.sha256).digest()
        assert_refused(_b64(b"\x02" + mac + key))


def test_every_single_character_change_is_refused() -> None:
    token = TOKENS.encode("doc-123456", FINGERPRINT)
    for cut in range(1, len(token)):
        assert_refused(token[:cut])
    for position in range(len(token)):
        for replacement in "AQgw-_09":
            altered = token[:position] + replacement + token[position + 1 :]
            # The last character carries bits base64 decoding ignores.
            if altered != token and _b64(_unb64(altered)) != token:
                assert_refused(altered)


def _unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


# --- garbage -----------------------------------------------------------------


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
        _b64(b"[" * 50_000 + b"]" * 50_000),
        _b64(b'{"v": 1, "k": "x"}'),
        _b64(b"\x02"),
        _b64(b"\x02" + b"\x00" * 32),
        _b64(b"\x02" + b"\x00" * 32 + b"k" * 2000),
        "A" * 100_000,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert_refused(token)


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


# --- the byte budget ----------------------------------------------------------


def test_the_largest_document_and_its_token_fit_the_default_message() -> None:
    largest = largest_document_bytes(
        max_text_bytes=1024 * 1024,
        max_document_id_bytes=512,
        max_metadata_keys=32,
        max_metadata_string_bytes=4096,
    )
    assert largest <= page_byte_budget(64 * 1024 * 1024)
    assert document_bytes(100, 2) < document_bytes(101, 2) < document_bytes(101, 3)


def test_a_token_of_the_longest_key_fits_the_response_margin() -> None:
    token = TOKENS.encode("😀" * 128, FINGERPRINT)  # 512 bytes, MAX_DOCUMENT_ID_BYTES
    assert len(token) < 1024
    assert page_byte_budget(10_000_000) == 10_000_000 - 8 * 1024
