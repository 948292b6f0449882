"""A short seed of the crash soak in `make test` (issue #13): each shape for
a few kills with a fixed seed, real processes, then lost = 0 and
orphans = 0. The full soak is `make soak`."""

from __future__ import annotations

from pathlib import Path

import pytest

from soak.__main__ import report, run_shape
from soak.cluster import postgres_reachable

pytestmark = pytest.mark.slow

SEED = 23  # each shape kills metadata, a metadata worker or PostgreSQL, an embedding worker
LOAD_SECONDS = 15


@pytest.mark.parametrize("shape", ["single", pytest.param("scaled", marks=pytest.mark.postgres)])
def test_a_short_seed_loses_and_orphans_nothing(shape: str, tmp_path: Path) -> None:
    if shape == "scaled" and (reason := postgres_reachable()) is not None:
        pytest.skip(reason)
    result = run_shape(
        shape,
        seed=SEED,
        minutes=LOAD_SECONDS / 60,
        kill_every=3.0,
        p=1.0,
        kills=None,
        clients=2,
        workdir=tmp_path,
    )
    summary = report(result)
    assert result["kills_total"] >= 3, summary
    assert sum(result["acknowledged"].values()) > 0, summary
    assert (result["lost"], result["orphans"]) == (0, 0), summary
    assert not result["crasher_errors"] and not result["driver_failures"], summary
