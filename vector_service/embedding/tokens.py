"""How many tokens a text will take, for forming batches.

A batch is padded to its longest text, so the batcher groups texts of similar
length (batcher.py). It can only group what it can measure: estimated from
characters (a WordPiece token is ~4 characters of English), texts of one
batch differ in real length enough that the model computes far more padding
than `SentenceTransformer.encode`, which sorts its whole input by length;
counted with the model's own tokenizer, nearly as little (figures:
docs/benchmarks.md).

Counting runs in the service process with the Rust `tokenizers` library on
the model's `tokenizer.json`: ~25 us a short text, ~350 us a 200-word passage,
off the event loop (it releases the GIL). A model without `tokenizer.json`
falls back to the estimate. The counts only shape batches: the worker
tokenizes again and reports its own counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

_LOGGER = logging.getLogger(__name__)


def estimate_tokens(text: str, window: int) -> int:
    """Wordpiece tokens are ~4 characters of English (plus [CLS] and [SEP])."""
    return min(window, len(text) // 4 + 2)


class TokenCounter:
    def __init__(self, model_path: str, window: int) -> None:
        self._window = window
        self._tokenizer: Any = None
        path = os.path.join(model_path, "tokenizer.json")
        if not os.path.isfile(path):
            _LOGGER.info(
                "no tokenizer.json beside the model: batches are formed from estimated lengths",
                extra={"model_path": model_path},
            )
            return
        # One thread: the counting runs beside the embedding workers, which
        # have the cores; Rust's own thread pool would compete with them.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # a tokenizer this library cannot read
            _LOGGER.warning(
                "tokenizer.json unreadable: batches are formed from estimated lengths",
                extra={"path": path, "error": str(exc)},
            )
            return
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model will see it (special tokens
        included, at most the window)."""
        if self._tokenizer is None:
            return [estimate_tokens(text, self._window) for text in texts]
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [min(self._window, len(encoding.ids)) for encoding in encodings]
