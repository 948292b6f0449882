"""The benchmark's work is sized from the machine's speed: a slow machine
gets proportionally fewer texts, documents and chunks (never fewer than the
quick sizes, never fewer pairs), a fast one no more than the full sizes."""

from __future__ import annotations

import dataclasses

from bench.context import Sizes


def test_a_machine_at_half_speed_gets_half_the_counts_and_every_pair() -> None:
    full = Sizes.full()
    half = full.scaled(0.5)
    assert half.repeat == full.repeat and half.metadata_repeat == full.metadata_repeat
    assert half.scale_large == full.scale_large // 2
    assert half.ingest_docs == full.ingest_docs // 2
    assert half.scale_small < half.scale_large


def test_never_more_work_than_full_and_never_less_than_quick() -> None:
    full, quick = Sizes.full(), Sizes.quick()
    assert full.scaled(1.7) == full
    tiny = full.scaled(0.01)
    for field in dataclasses.fields(Sizes):
        if field.name not in ("repeat", "metadata_repeat"):
            assert getattr(tiny, field.name) == getattr(quick, field.name), field.name
    assert quick.scaled(0.3) == quick


def test_every_count_belongs_to_the_section_that_uses_it() -> None:
    from bench.__main__ import SECTIONS, USES

    assert set(USES) == set(SECTIONS)
    counts = [name for names in USES.values() for name in names]
    assert sorted(counts) == sorted(
        f.name for f in dataclasses.fields(Sizes) if f.name not in ("repeat", "metadata_repeat")
    )
