"""Token counts for batching come from the model's own tokenizer (what the
worker will see), and fall back to an estimate without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from vector_service.config import packaged_model_path
from vector_service.embedding.tokens import TokenCounter, estimate_tokens

TEXTS = [
    "Hello, world.",
    "def chunk_text(text: str, size: int) -> list[Chunk]:",
    "Ünïcødé and emoji ✓ 🚀 text",
    "word " * 400,  # longer than the window
    "",
]


def test_counts_match_the_model_tokenizer_with_special_tokens_and_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(packaged_model_path())
    counter = TokenCounter(packaged_model_path(), window=256)
    assert counter.exact
    expected = [min(256, len(reference(text)["input_ids"])) for text in TEXTS]
    assert counter.count(TEXTS) == expected
    assert expected[3] == 256 and expected[4] == 2  # truncated; [CLS] [SEP] only


def test_without_a_tokenizer_file_lengths_are_estimated(tmp_path: Path) -> None:
    counter = TokenCounter(str(tmp_path), window=256)
    assert not counter.exact
    assert counter.count(TEXTS) == [estimate_tokens(t, 256) for t in TEXTS]


def test_an_unreadable_tokenizer_file_falls_back_to_the_estimate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tokenizer.json").write_text("{not json")
    counter = TokenCounter(str(tmp_path), window=128)
    assert not counter.exact
    assert counter.count(["abcd" * 100]) == [102]
    assert "unreadable" in caplog.text
