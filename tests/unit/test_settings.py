"""One `.env` for the pair (DESIGN.md §4, issue 11): service prefixes win, a
plain name both services define is refused in the shared `.env`, plain names
keep working in a service's own environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from askmojo.common.limits import limit_problems
from askmojo.common.settings import PER_SERVICE_NAMES, SHARED_NAMES, ServiceSettings
from askmojo.common.text_hash import SERVICE_SET_KEYS
from askmojo.vector.v1 import embedding_service_pb2 as epb
from metadata_service.config import MetadataSettings
from vector_service.config import VectorSettings

SERVICES = (MetadataSettings, VectorSettings)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting of the developer's (or another test's) environment leaks in."""
    names = {field.upper() for cls in SERVICES for field in cls.model_fields}
    for key in list(os.environ):
        upper = key.upper()
        plain = upper.removeprefix("METADATA_").removeprefix("VECTOR_")
        if upper in names or plain in names:
            monkeypatch.delenv(key)


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_the_per_service_list_is_the_fields_both_services_define() -> None:
    both = {name.upper() for name in MetadataSettings.model_fields} & {
        name.upper() for name in VectorSettings.model_fields
    }
    shared = {name.upper() for name in ServiceSettings.model_fields} - PER_SERVICE_NAMES
    assert shared == SHARED_NAMES
    assert both - SHARED_NAMES == PER_SERVICE_NAMES


@pytest.mark.parametrize("cls", SERVICES)
def test_a_plain_per_service_name_in_the_shared_env_file_is_refused(
    cls: type[ServiceSettings], tmp_path: Path
) -> None:
    path = env_file(tmp_path, "MAX_PAGE_SIZE=5000\n")
    with pytest.raises(ValidationError) as info:
        cls(_env_file=path)
    message = str(info.value)
    assert "MAX_PAGE_SIZE in .env would set both services" in message
    assert "METADATA_MAX_PAGE_SIZE" in message and "VECTOR_MAX_PAGE_SIZE" in message


def test_a_prefixed_name_changes_only_its_service(tmp_path: Path) -> None:
    path = env_file(tmp_path, "METADATA_MAX_PAGE_SIZE=500\nVECTOR_MAX_METADATA_KEYS=80\n")
    metadata, vector = MetadataSettings(_env_file=path), VectorSettings(_env_file=path)
    assert metadata.max_page_size == 500
    assert vector.max_page_size == VectorSettings.model_fields["max_page_size"].default
    assert vector.max_metadata_keys == 80
    assert metadata.max_metadata_keys == MetadataSettings.model_fields["max_metadata_keys"].default


def test_names_of_one_service_and_shared_names_stay_plain(tmp_path: Path) -> None:
    path = env_file(
        tmp_path,
        "METADATA_PORT=1234\nVECTOR_PORT=4321\nDATABASE_URL=sqlite:///x.db\n"
        "VECTOR_SERVICE_ADDRESS=vector:50052\nMAX_TEXTS_PER_CALL=64\n"
        "LOG_LEVEL=DEBUG\nENVIRONMENT=production\n",
    )
    metadata, vector = MetadataSettings(_env_file=path), VectorSettings(_env_file=path)
    assert (metadata.metadata_port, vector.vector_port) == (1234, 4321)
    assert metadata.database_url == "sqlite:///x.db"
    assert metadata.vector_service_address == "vector:50052"
    assert vector.max_texts_per_call == 64
    assert metadata.log_level == vector.log_level == "DEBUG"
    assert metadata.is_production and vector.is_production


def test_the_prefix_wins_over_the_plain_name_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_PAGE_SIZE", "700")
    # Plain in a service's own environment: still read.
    assert MetadataSettings(_env_file=None).max_page_size == 700
    assert VectorSettings(_env_file=None).max_page_size == 700
    monkeypatch.setenv("VECTOR_MAX_PAGE_SIZE", "900")
    assert VectorSettings(_env_file=None).max_page_size == 900
    assert MetadataSettings(_env_file=None).max_page_size == 700
    # A prefixed name in .env beats the plain one in the environment.
    path = env_file(tmp_path, "METADATA_MAX_PAGE_SIZE=300\n")
    assert MetadataSettings(_env_file=path).max_page_size == 300


def test_filter_limits_are_settings_capped_by_the_ceilings(tmp_path: Path) -> None:
    path = env_file(tmp_path, "METADATA_MAX_FILTER_CONDITIONS=64\nVECTOR_MAX_FILTER_VALUES=100\n")
    assert MetadataSettings(_env_file=path).filter_limits.max_conditions == 64
    assert VectorSettings(_env_file=path).filter_limits.max_values == 100
    with pytest.raises(ValidationError):
        VectorSettings(_env_file=None, max_filter_conditions=100_000)


# --- limits the pair must agree on ---------------------------------------------


def test_the_reserved_key_count_is_what_the_indexer_adds() -> None:
    from types import SimpleNamespace

    from metadata_service import outbox
    from metadata_service.config import RESERVED_VECTOR_KEYS

    chunk = SimpleNamespace(
        document_id="d", ordinal=0, incarnation=1, generation=1, content_hash="ab" * 32
    )
    added = outbox.vector_metadata(chunk, {})  # type: ignore[arg-type]
    assert len(added) == RESERVED_VECTOR_KEYS


def _model_info(**overrides: int) -> epb.GetModelInfoResponse:
    vector = VectorSettings(_env_file=None)
    values = {
        "max_text_length": vector.max_text_length,
        "max_message_bytes": 4 * 1024 * 1024,
        # As GetModelInfo reports it: less the key the service sets itself.
        "max_metadata_keys": vector.max_metadata_keys - SERVICE_SET_KEYS,
        "max_metadata_string_bytes": vector.max_metadata_string_bytes,
        "max_records_per_call": vector.max_records_per_call,
        "max_filter_conditions": vector.max_filter_conditions,
        "max_filter_values": vector.max_filter_values,
        "max_ids_per_call": vector.max_ids_per_call,
        **overrides,
    }
    return epb.GetModelInfoResponse(model="m", dimension=3, **values)


def test_the_default_settings_of_the_pair_agree() -> None:
    sent = MetadataSettings(_env_file=None).sent_to_vector_service
    assert limit_problems(sent, _model_info()) == []
    # An older vector service that reports no limits is not second-guessed.
    assert limit_problems(sent, epb.GetModelInfoResponse()) == []


def test_the_batched_vector_delete_counts_as_filter_values() -> None:
    """A delete by filter sends one `_inc IN (...)` of up to
    DELETE_BATCH_DOCUMENTS values: a vector service that takes fewer would
    refuse every such Delete, so the check at first contact says so."""
    sent = MetadataSettings(
        _env_file=None, max_filter_values=100, delete_batch_documents=500
    ).sent_to_vector_service
    problems = limit_problems(sent, _model_info(max_filter_values=200))
    assert len(problems) == 1, problems
    assert "VECTOR_MAX_FILTER_VALUES to at least 500" in problems[0]
    assert "DELETE_BATCH_DOCUMENTS" in problems[0]


@pytest.mark.parametrize(
    ("reported", "raise_there", "lower_here"),
    [
        (
            {"max_metadata_keys": 20},
            # 32 + 5 keys sent, and the one the vector service sets itself.
            "VECTOR_MAX_METADATA_KEYS to at least 38",
            "METADATA_MAX_METADATA_KEYS",
        ),
        (
            {"max_metadata_string_bytes": 100},
            "VECTOR_MAX_METADATA_STRING_BYTES",
            "MAX_DOCUMENT_ID_BYTES",
        ),
        ({"max_text_length": 1000}, "VECTOR_MAX_TEXT_LENGTH", "MAX_CHUNK_SIZE"),
        (
            {"max_records_per_call": 10},
            "VECTOR_MAX_RECORDS_PER_CALL to at least 256",
            "INDEX_BATCH_RECORDS",
        ),
        (
            {"max_filter_conditions": 100},
            "VECTOR_MAX_FILTER_CONDITIONS to at least 256",
            "METADATA_MAX_FILTER_CONDITIONS",
        ),
        ({"max_filter_values": 100}, "VECTOR_MAX_FILTER_VALUES", "METADATA_MAX_FILTER_VALUES"),
        # Reconcile Gets and Deletes 500 ids at a time (RECONCILE_PAGE_IDS).
        (
            {"max_ids_per_call": 100},
            "VECTOR_MAX_IDS_PER_CALL to at least 500",
            "INDEX_BATCH_RECORDS",
        ),
        ({"max_message_bytes": 4096}, "VECTOR_MAX_MESSAGE_BYTES", "MAX_CHUNK_SIZE"),
    ],
)
def test_a_mismatch_names_the_settings_to_change(
    reported: dict[str, int], raise_there: str, lower_here: str
) -> None:
    sent = MetadataSettings(_env_file=None).sent_to_vector_service
    problems = limit_problems(sent, _model_info(**reported))
    assert len(problems) == 1, problems
    assert f"raise {raise_there}" in problems[0] and lower_here in problems[0]
