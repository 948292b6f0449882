"""Opaque `ListIds` page tokens: the last id of the page they end (keyset
paging) and a fingerprint of the query that produced them, so a token
replayed on another collection or filter is refused instead of silently
paging something else. The format is ours to change: clients pass
`next_page_token` back as is."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from vector_service.errors import InvalidArgument

_VERSION = 1
# An id of MAX_RECORD_ID_BYTES, JSON-escaped and base64-encoded, fits easily;
# anything longer is not one of ours and is refused before it is decoded.
_MAX_TOKEN_CHARS = 8192
_MALFORMED = "malformed page token: pass next_page_token from the previous response as is"


def query_fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode_page_token(last_id: str, fingerprint: str) -> str:
    payload = json.dumps({"v": _VERSION, "k": last_id, "q": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str, field: str = "page_token") -> str | None:
    """The id to continue after, or None for the first page. Anything but a
    token this service made for this query is INVALID_ARGUMENT (an old
    numeric offset token included)."""
    if not token:
        return None
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument(field, _MALFORMED)
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        version, last_id, token_query = payload["v"], payload["k"], payload["q"]
    # RecursionError: json.loads of a token nesting thousands of brackets.
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError, RecursionError):
        raise InvalidArgument(field, _MALFORMED) from None
    if not isinstance(last_id, str) or not last_id:
        raise InvalidArgument(field, _MALFORMED)
    if version != _VERSION:
        raise InvalidArgument(field, "page token is from another version of the service")
    if token_query != fingerprint:
        raise InvalidArgument(
            field,
            "page token belongs to a different query: keep collection and filter the same "
            "while paging",
        )
    return last_id
