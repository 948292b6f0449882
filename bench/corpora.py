"""Fixed, seeded corpora: the same texts every run.

* short texts: 5-15 words (queries, titles, chat turns);
* passages: ~200 words (a page of a document);
* real: the documentation of Python's standard library modules shipped with
  this interpreter (evals/known_item.py), text nobody on the team wrote.
"""

from __future__ import annotations

import random

WORDS = " ".join(
    (
        "the of and to in is for on with as by at from that this are be or it an was which",
        "storage vector index query chunk document metadata service embedding search model",
        "batch stream filter collection database write read pool worker process latency",
        "river mountain history language music garden winter harbour library engine market",
        "quickly carefully rarely often never always together apart above below between",
    )
).split(" ")


def word_texts(count: int, min_words: int, max_words: int, seed: int) -> list[str]:
    """`count` texts of min..max words drawn from WORDS."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
        for _ in range(count)
    ]


def short_texts(count: int, seed: int = 11) -> list[str]:
    return word_texts(count, 5, 15, seed)


def passages(count: int, seed: int = 13) -> list[str]:
    """~200 words each, in sentences of 8-20 words (so chunking has
    boundaries to respect)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = rng.randint(170, 230)
        sentences = []
        while words > 0:
            n = min(words, rng.randint(8, 20))
            sentences.append(word_texts(1, n, n, rng.randrange(1 << 30))[0].capitalize())
            words -= n
        out.append(" ".join(sentences))
    return out


def metadata_for(index: int) -> dict[str, str | int | float]:
    """Typed metadata of the kind users filter on; `source` has 17 values."""
    return {"source": f"site-{index % 17}", "year": 1990 + index % 35, "score": index % 100 / 100}
