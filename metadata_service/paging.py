"""Opaque cursor tokens for keyset pagination, and the byte budget of a page.

A token holds the last key of the page it ends, signed (HMAC-SHA256) under
the deployment's secret together with a fingerprint of the query that
produced it. A token replayed with another filter, altered, or made up is
refused instead of silently returning a wrong page (AIP-158): the signature
only matches for the very key this service handed out, for the same query.
The fingerprint itself is not in the token, only in what is signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from metadata_service.errors import InvalidArgument

# The first byte of every token; tokens of version 1 (unsigned JSON) are refused.
_VERSION = 2
_MAC_BYTES = hashlib.sha256().digest_size
# Keys are collection names and document ids, both far shorter.
_MAX_KEY_BYTES = 1024
_HINT = (
    "pass next_page_token from the previous response unchanged, "
    "with the same collection, filter and states"
)

# --- the byte budget of a ListDocuments page ---------------------------------
# Room a response keeps besides its documents: the next page token (a key of
# up to 512 bytes, signed and base64'd: under 1 KiB) and the framing.
RESPONSE_MARGIN_BYTES = 8 * 1024
# A document's fields besides id, text, error and metadata (content hash,
# state, counts, two timestamps) with every tag and length prefix: under 200.
DOCUMENT_OVERHEAD_BYTES = 512
# Per metadata entry besides its key and string value: the map entry's and
# the MetadataValue's framing and a number of up to 10 bytes.
METADATA_ENTRY_OVERHEAD_BYTES = 32
# A stored error is cut to 2,000 characters of up to 4 bytes each.
MAX_ERROR_BYTES = 8000
_MAX_METADATA_KEY_BYTES = 64


def page_byte_budget(max_message_bytes: int) -> int:
    """Bytes of documents one page may carry and still fit the message limit."""
    return max_message_bytes - RESPONSE_MARGIN_BYTES


def largest_document_bytes(
    *,
    max_text_bytes: int,
    max_document_id_bytes: int,
    max_metadata_keys: int,
    max_metadata_string_bytes: int,
) -> int:
    """`document_bytes` of the largest document the limits admit: a page
    holds at least one document, so this must fit the budget (the settings
    check it at start-up)."""
    return document_bytes(
        max_document_id_bytes
        + max_text_bytes
        + MAX_ERROR_BYTES
        + max_metadata_keys * (_MAX_METADATA_KEY_BYTES + max_metadata_string_bytes),
        max_metadata_keys,
    )


def document_bytes(data_bytes: int, metadata_entries: int) -> int:
    """An upper bound of a Document message's size, from the bytes of its
    id, text, error, metadata keys and string values, and its number of
    metadata entries."""
    return DOCUMENT_OVERHEAD_BYTES + data_bytes + metadata_entries * METADATA_ENTRY_OVERHEAD_BYTES


def query_fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class PageTokens:
    """Issues and checks the page tokens of one deployment. Every worker and
    replica must hold the same `secret`, or a page fetched from one is not
    continued by another."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the page token secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, key: bytes, fingerprint: str) -> bytes:
        message = b"askmojo page token\x00%d\x00%s\x00%s" % (_VERSION, fingerprint.encode(), key)
        return hmac.digest(self._secret, message, "sha256")

    def encode(self, last_key: str, fingerprint: str) -> str:
        key = last_key.encode()
        raw = bytes([_VERSION]) + self._mac(key, fingerprint) + key
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, token: str, fingerprint: str, field: str = "page_token") -> str | None:
        """The key to continue after, or None for the first page. Whatever is
        wrong with a token, the answer is the same: no oracle for forgers."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        # ValueError: characters outside ASCII in the str.
        except (ValueError, binascii.Error):
            raise _invalid(field) from None
        version, mac, key = raw[:1], raw[1 : 1 + _MAC_BYTES], raw[1 + _MAC_BYTES :]
        if (
            version != bytes([_VERSION])
            or len(key) > _MAX_KEY_BYTES
            or not hmac.compare_digest(mac, self._mac(key, fingerprint))
        ):
            raise _invalid(field)
        # Signed by this deployment, so the key is one this service wrote.
        return key.decode()


def _invalid(field: str) -> InvalidArgument:
    return InvalidArgument(
        field,
        f"not valid for this query: {_HINT}",
        message=f"{field} is not valid for this query: {_HINT}",
    )
