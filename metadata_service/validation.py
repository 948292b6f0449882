"""Input rules, checked before anything touches the database.

Each function either returns the checked value or raises `InvalidArgument`
naming the field and the rule, in words a client developer can act on.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from askmojo.common.echo import quoted
from askmojo.common.filters import InvalidFilterError, MetadataScalar, check_metadata
from askmojo.common.names import COLLECTION_NAME_RULE, is_valid_collection_name
from metadata_service.chunking import Chunk, chunk_text
from metadata_service.config import MetadataSettings
from metadata_service.domain import ChunkingSpec, CollectionSpec, DocumentInput
from metadata_service.errors import InvalidArgument

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RESERVED_KEY_PREFIX = "_"


def collection_name(name: str, field: str) -> str:
    """`field` is the request field the name came in (`name` or
    `collection`), which the violation names."""
    if not name:
        raise InvalidArgument(field, "collection name must not be empty")
    if not is_valid_collection_name(name):
        raise InvalidArgument(
            field, f"collection name {quoted(name)} is invalid: {COLLECTION_NAME_RULE}"
        )
    return name


def plain_text(value: str, field: str, *, max_bytes: int, single_line: bool = False) -> str:
    size = len(value.encode())
    if size > max_bytes:
        raise InvalidArgument(field, f"is {size} bytes; the limit is {max_bytes}")
    if "\x00" in value or (single_line and _CONTROL.search(value)):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def chunking(spec: CollectionSpec, settings: MetadataSettings) -> ChunkingSpec:
    size = spec.chunk_size or settings.default_chunk_size
    if spec.chunk_size < 0 or not 50 <= size <= settings.max_chunk_size:
        raise InvalidArgument(
            "chunking.chunk_size", f"must be between 50 and {settings.max_chunk_size} characters"
        )
    overlap = spec.chunk_overlap or min(settings.default_chunk_overlap, size // 4)
    # Under half the size, every chunk reaches past the end of the one before;
    # more overlap would make chunks that repeat their neighbour and add nothing.
    if spec.chunk_overlap < 0 or overlap * 2 >= size:
        raise InvalidArgument(
            "chunking.chunk_overlap",
            f"must be at least 0 and less than half of chunk_size ({size})",
        )
    return ChunkingSpec(size, overlap)


def document_id(doc_id: str, settings: MetadataSettings, field: str = "id") -> str:
    if not doc_id:
        raise InvalidArgument(field, "document id must not be empty")
    size = len(doc_id.encode())
    if size > settings.max_document_id_bytes:
        raise InvalidArgument(
            field,
            f"document id is {size} bytes; the limit is {settings.max_document_id_bytes} "
            "(MAX_DOCUMENT_ID_BYTES)",
        )
    if _CONTROL.search(doc_id):
        raise InvalidArgument(field, "document id must not contain control characters")
    return doc_id


def page_size(requested: int, settings: MetadataSettings) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or settings.default_page_size, settings.max_page_size)


@dataclass(frozen=True)
class PreparedDocument:
    """A valid document with everything the write needs computed outside the
    transaction (hashing and chunking are CPU work)."""

    id: str
    text: str
    metadata: Mapping[str, MetadataScalar]
    content_hash: str
    metadata_hash: str
    chunks: list[Chunk]


def prepare_document(
    doc: DocumentInput, chunking_spec: ChunkingSpec, settings: MetadataSettings, field: str
) -> PreparedDocument:
    document_id(doc.id, settings, f"{field}.id")
    text_bytes = len(doc.text.encode())
    if text_bytes > settings.max_text_bytes:
        raise InvalidArgument(
            f"{field}.text",
            f"text is {text_bytes} bytes; the limit is {settings.max_text_bytes} (MAX_TEXT_BYTES)",
        )
    if not doc.text.strip():
        raise InvalidArgument(f"{field}.text", "text must not be empty or only whitespace")
    if "\x00" in doc.text:
        raise InvalidArgument(f"{field}.text", "text must not contain NUL characters")
    metadata = _metadata(doc.metadata, settings, f"{field}.metadata")
    return PreparedDocument(
        id=doc.id,
        text=doc.text,
        metadata=metadata,
        content_hash=hashlib.sha256(doc.text.encode()).hexdigest(),
        metadata_hash=metadata_hash(metadata),
        chunks=chunk_text(doc.text, chunking_spec.chunk_size, chunking_spec.chunk_overlap),
    )


def metadata_hash(metadata: Mapping[str, MetadataScalar]) -> str:
    """sha256 of the metadata with its types: 1, 1.0, "1" and true differ."""
    canonical = sorted((key, type(value).__name__, value) for key, value in metadata.items())
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def _metadata(
    metadata: Mapping[str, MetadataScalar | None], settings: MetadataSettings, field: str
) -> dict[str, MetadataScalar]:
    try:
        return check_metadata(
            metadata,
            max_keys=settings.max_metadata_keys,
            max_string_bytes=settings.max_metadata_string_bytes,
            field=field,
            reserved_prefix=RESERVED_KEY_PREFIX,
        )
    except InvalidFilterError as exc:
        raise InvalidArgument(exc.field, exc.description) from None
