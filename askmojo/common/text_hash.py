"""The vector service's record of what it embedded (issue #12: a vector
forged behind the metadata service's back went unnoticed).

When the vector service embeds a record's text itself it stores, beside the
caller's metadata, a hash of exactly that text under `TEXT_HASH_KEY`. No
caller may set the key (the service refuses it), and a record stored from a
raw vector carries none, so the metadata service can tell a vector made from
its chunk's text from any other: its Reconcile compares the hash with
`text_hash(chunk text)`. Shared so both sides hash alike."""

from __future__ import annotations

import hashlib

# A reserved ("_") key; the metadata service's own are _doc _ord _inc _gen _hash.
TEXT_HASH_KEY = "_text_sha256"
# 128 bits of the sha256 (hex): collisions are out of reach, and the value
# stays small beside any MAX_METADATA_STRING_BYTES.
TEXT_HASH_CHARS = 32
# Metadata keys the vector service sets on a record itself: a caller may send
# MAX_METADATA_KEYS less these (what GetModelInfo reports).
SERVICE_SET_KEYS = 1


def text_hash(text: str) -> str:
    """The value stored under TEXT_HASH_KEY for a record embedded from `text`."""
    return hashlib.sha256(text.encode()).hexdigest()[:TEXT_HASH_CHARS]
