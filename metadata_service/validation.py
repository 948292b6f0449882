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
from metadata_service.chunking import Chunk, chunk_text, chunk_tokens
from metadata_service.config import MetadataSettings
from metadata_service.domain import ChunkingSpec, ChunkUnit, CollectionSpec, DocumentInput
from metadata_service.errors import FailedPrecondition, InvalidArgument
from metadata_service.tokenizer import PACKAGED_MODEL, tokenizer_for

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


def chunking(spec: CollectionSpec, model: str, settings: MetadataSettings) -> ChunkingSpec:
    """The chunking of a new collection of embedding model `model`: TOKENS
    counts that model's tokens, so it needs the tokenizer here
    (metadata_service/tokenizer.py) and a size within the model's window."""
    tokenizer = tokenizer_for(model)
    unit = spec.chunk_unit
    if unit is None:
        # A size without a unit is in characters, as every client meant it
        # before units existed; nothing given takes the default unit.
        sized = spec.chunk_size or spec.chunk_overlap
        unit = (
            settings.default_chunk_unit
            if tokenizer is not None and not sized
            else ChunkUnit.CHARACTERS
        )
    if unit == ChunkUnit.TOKENS:
        if tokenizer is None:
            raise InvalidArgument(
                "chunking.unit",
                f"TOKENS needs the tokenizer of model {quoted(model)}, which this service "
                f"does not have (it has {quoted(PACKAGED_MODEL)}'s); use CHARACTERS",
            )
        default_size, default_overlap = (
            settings.default_chunk_size_tokens,
            settings.default_chunk_overlap_tokens,
        )
        smallest, largest = 16, tokenizer.max_chunk_tokens
        words = (
            f"tokens (the window of {quoted(model)} is {tokenizer.window} tokens, "
            f"{tokenizer.special_tokens} of them special)"
        )
    else:
        default_size, default_overlap = settings.default_chunk_size, settings.default_chunk_overlap
        smallest, largest, words = 50, settings.max_chunk_size, "characters"
    size = spec.chunk_size or min(default_size, largest)
    if spec.chunk_size < 0 or not smallest <= size <= largest:
        raise InvalidArgument(
            "chunking.chunk_size", f"must be between {smallest} and {largest} {words}"
        )
    overlap = spec.chunk_overlap or min(default_overlap, size // 4)
    # Under half the size, every chunk reaches past the end of the one before;
    # more overlap would make chunks that repeat their neighbour and add nothing.
    if spec.chunk_overlap < 0 or overlap * 2 >= size:
        raise InvalidArgument(
            "chunking.chunk_overlap",
            f"must be at least 0 and less than half of chunk_size ({size})",
        )
    return ChunkingSpec(size, overlap, unit)


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
    doc: DocumentInput,
    chunking_spec: ChunkingSpec,
    settings: MetadataSettings,
    field: str,
    model: str = "",
) -> PreparedDocument:
    """`model`: the collection's embedding model, whose tokenizer a TOKENS
    collection chunks with."""
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
        chunks=chunk(doc.text, chunking_spec, model),
    )


def chunk(text: str, spec: ChunkingSpec, model: str) -> list[Chunk]:
    if spec.unit == ChunkUnit.CHARACTERS:
        return chunk_text(text, spec.chunk_size, spec.chunk_overlap)
    tokenizer = tokenizer_for(model)
    if tokenizer is None:
        # Created with the tokenizer at hand, which this process lacks (a
        # broken install): refuse rather than chunk differently.
        raise FailedPrecondition(
            f"the collection chunks in tokens of model {quoted(model)}, "
            "whose tokenizer this service cannot load"
        )
    return chunk_tokens(text, spec.chunk_size, spec.chunk_overlap, tokenizer)


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
