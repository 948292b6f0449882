"""How fast this machine is right now, against the day the full sizes were
chosen: the work of each section is sized from it, so that `make bench`
finishes within 10 minutes even when the VM runs at half speed (a shared
2-core VM: neighbours and CPU steal can halve it for minutes at a time).

The probe is the work the benchmark is mostly made of, in-process `encode`
of short texts with the service's thread budget, timed a few times (median):
about 3 s when the model is loaded (the baselines load it anyway).
"""

from __future__ import annotations

from bench.context import baseline_model
from bench.corpora import short_texts
from bench.timing import median_rate

# Texts/s of the probe below on this VM (2 CPUs, 2 torch threads) when
# nothing else runs on it: the speed Sizes.full() was chosen for.
REFERENCE_TEXTS_PER_S = 400.0
PROBE_TEXTS = 256
PROBE_RUNS = 5


def speed(threads: int, runs: int = PROBE_RUNS) -> float:
    """This machine's speed now over the reference: 1.0 as fast, 0.5 half.
    A quick run, whose sizes never scale, only reports it: one run will do."""
    model = baseline_model(threads)
    texts = short_texts(PROBE_TEXTS, seed=29)

    def encode() -> object:
        return model.encode(texts, batch_size=128, normalize_embeddings=True)

    return median_rate(encode, len(texts), runs) / REFERENCE_TEXTS_PER_S
