"""Naming rules both services enforce, with the words that explain them."""

from __future__ import annotations

import ipaddress
import re

# Chroma's collection-name rule (the vector side stores each collection under
# this very name), capped at 63 characters so names also fit DNS-style labels.
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]")
COLLECTION_NAME_RULE = (
    "3 to 63 characters of A-Z a-z 0-9 . _ -, starting and ending with a letter or digit, "
    "without '..', and not an IPv4 address such as 10.0.0.1"
)


def is_valid_collection_name(name: str) -> bool:
    return bool(_COLLECTION_NAME.fullmatch(name)) and ".." not in name and not _is_ipv4(name)


def _is_ipv4(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True
