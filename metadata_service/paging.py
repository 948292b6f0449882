"""Opaque cursor tokens for keyset pagination.

A token holds the last key of the page it ends and a fingerprint of the query
that produced it, so a token replayed with another filter is refused instead
of silently returning a wrong page (AIP-158).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from metadata_service.errors import InvalidArgument

_VERSION = 1


def query_fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def encode_page_token(last_key: str, fingerprint: str) -> str:
    payload = json.dumps({"v": _VERSION, "k": last_key, "q": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: str, field: str = "page_token") -> str | None:
    """The key to continue after, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        version, last_key, token_query = payload["v"], payload["k"], payload["q"]
    # RecursionError: json.loads of a token nesting thousands of brackets.
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError, RecursionError):
        raise InvalidArgument(
            field, "malformed page token: pass next_page_token from the previous response as is"
        ) from None
    if not isinstance(last_key, str) or "\x00" in last_key or len(last_key) > 1024:
        raise InvalidArgument(
            field, "malformed page token: pass next_page_token from the previous response as is"
        )
    if version != _VERSION:
        raise InvalidArgument(field, "page token is from another version of the service")
    if token_query != fingerprint:
        raise InvalidArgument(
            field,
            "page token belongs to a different query: keep collection, filter and states "
            "the same while paging",
        )
    return last_key
