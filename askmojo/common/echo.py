"""How both services echo client input in their errors, and the bound on
every text a status carries.

A status travels in the response trailers, which gRPC caps (8 KiB by
default): an error echoing a 20,000-character name reached the client as
RESOURCE_EXHAUSTED "Stream removed" instead of itself. A value is echoed for a
person to recognise it, which its start does. Dependency-free, so the filter
parser (which `askmojo.common.rpc` imports) can use it too.
"""

from __future__ import annotations

ECHO_CHARS = 80
# What any one message, field path or description may take of the trailers,
# whoever built it (the filter parser, the other service, Chroma): the message
# goes out twice (grpc-message, percent-encoded: up to 3x; and inside
# grpc-status-details-bin, base64: 4/3x) and each violation once, so even in
# the worst case the trailers stay under ~6.5 KiB.
MESSAGE_BYTES = 1024
FIELD_BYTES = 256


def quoted(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` as an error echoes it: its `repr`, cut to its first `limit`
    characters with its full length said ("…(N chars)")."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}…({len(value)} chars)"


def fit(text: str, max_bytes: int = MESSAGE_BYTES) -> str:
    """`text` in at most `max_bytes` UTF-8 bytes, the "…(N chars)" marker
    included: the safety net under `quoted`, for texts built from parts that
    may each be long (a field path, then its description)."""
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    suffix = f"…({len(text)} chars)"
    # errors="ignore" drops a character the cut split in two.
    return encoded[: max_bytes - len(suffix.encode())].decode(errors="ignore") + suffix
