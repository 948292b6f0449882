"""Limits the two services must agree on, checked by the metadata service
when it first reaches the vector service (DESIGN.md §4): everything it may
send must be within what the vector service accepts, or every chunk would
fail there for a configuration mismatch. Pure; the vector service reports
its side in GetModelInfo."""

from __future__ import annotations

from dataclasses import dataclass

from askmojo.common.text_hash import SERVICE_SET_KEYS
from askmojo.vector.v1 import embedding_service_pb2 as epb

# Room a record needs beyond its text and metadata values: id, keys, framing.
_RECORD_OVERHEAD_BYTES = 4096
# A character of text is at most 4 bytes of UTF-8.
_MAX_UTF8_BYTES = 4


@dataclass(frozen=True)
class SentLimits:
    """The most the metadata service sends the vector service, each with the
    setting that bounds it (for the message)."""

    metadata_keys: int  # a document's keys plus the service's reserved ones
    reserved_keys: int
    metadata_string_bytes: int  # a value, the document id (reserved key) included
    text_chars: int  # a chunk (MAX_CHUNK_SIZE) or a search query
    records_per_call: int
    ids_per_call: int  # one vector Get/Delete: an indexing batch, a reconcile page
    filter_conditions: int
    filter_values: int


def limit_problems(sent: SentLimits, info: epb.GetModelInfoResponse) -> list[str]:
    """One sentence per limit the vector service would refuse, naming the
    setting to raise there or lower here; empty when they agree. A limit the
    vector service does not report (0) is not checked."""
    problems: list[str] = []

    def check(
        needed: int, offered: int, name: str, here: str, what: str, *, setting_extra: int = 0
    ) -> None:
        """`setting_extra`: how much more than it accepts from a caller the
        vector service's setting must be."""
        if offered and needed > offered:
            problems.append(
                f"{what}: the metadata service may send {needed}, the vector service "
                f"accepts {offered}; raise VECTOR_{name} to at least "
                f"{needed + setting_extra} or lower {here}"
            )

    # The vector service reports the keys a caller may send: its setting less
    # the one it sets itself (askmojo.common.text_hash).
    check(
        sent.metadata_keys,
        info.max_metadata_keys,
        "MAX_METADATA_KEYS",
        f"METADATA_MAX_METADATA_KEYS (it adds {sent.reserved_keys} keys of its own)",
        "metadata keys per record",
        setting_extra=SERVICE_SET_KEYS,
    )
    check(
        sent.metadata_string_bytes,
        info.max_metadata_string_bytes,
        "MAX_METADATA_STRING_BYTES",
        "METADATA_MAX_METADATA_STRING_BYTES (or MAX_DOCUMENT_ID_BYTES)",
        "bytes of a metadata string",
    )
    check(
        sent.text_chars,
        info.max_text_length,
        "MAX_TEXT_LENGTH",
        "MAX_CHUNK_SIZE (and MAX_QUERY_BYTES)",
        "characters of a text",
    )
    check(
        sent.records_per_call,
        info.max_records_per_call,
        "MAX_RECORDS_PER_CALL",
        "INDEX_BATCH_RECORDS",
        "records per call",
    )
    check(
        sent.ids_per_call,
        info.max_ids_per_call,
        "MAX_IDS_PER_CALL",
        "INDEX_BATCH_RECORDS (reconcile asks for RECONCILE_PAGE_IDS)",
        "ids per Get or Delete",
    )
    check(
        sent.filter_conditions,
        info.max_filter_conditions,
        "MAX_FILTER_CONDITIONS",
        "METADATA_MAX_FILTER_CONDITIONS",
        "filter conditions",
    )
    check(
        sent.filter_values,
        info.max_filter_values,
        "MAX_FILTER_VALUES",
        "METADATA_MAX_FILTER_VALUES (and DELETE_BATCH_DOCUMENTS)",
        "filter IN/NIN values",
    )
    record_bytes = (
        sent.text_chars * _MAX_UTF8_BYTES
        + sent.metadata_keys * (sent.metadata_string_bytes + 80)
        + _RECORD_OVERHEAD_BYTES
    )
    check(
        record_bytes,
        info.max_message_bytes,
        "MAX_MESSAGE_BYTES",
        "MAX_CHUNK_SIZE or the metadata limits",
        "bytes of one record",
    )
    return problems
