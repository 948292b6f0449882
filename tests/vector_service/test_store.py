"""One contract suite for the vector store, run against embedded Chroma and a
real Chroma server (`chroma run`)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from askmojo.common.filters import AllOf, AnyOf, FilterNode, Op
from tests.conftest import vector_settings
from tests.filter_cases import FILTER_CASES, FILTER_RECORDS, cond
from vector_service import store as store_module
from vector_service.store import (
    CollectionNotFound,
    DimensionMismatch,
    StoreLocked,
    VectorStore,
    to_where,
)


@pytest.fixture
def name() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def filled(store: VectorStore, name: str) -> str:
    store.ensure_collection(name, 3, "toy")
    vectors = [unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 1)]
    store.upsert(name, list(FILTER_RECORDS), np.stack(vectors), list(FILTER_RECORDS.values()))
    return name


def test_collections(store: VectorStore, name: str) -> None:
    created = store.ensure_collection(name, 3, "toy")
    assert (created.dimension, created.model, created.created) == (3, "toy", True)
    again = store.ensure_collection(name, 3, "toy")
    assert again.created is False
    with pytest.raises(DimensionMismatch, match="dimension 3"):
        store.ensure_collection(name, 4, "toy")
    assert store.drop_collection(name) is True
    assert store.drop_collection(name) is False
    with pytest.raises(CollectionNotFound):
        store.count(name)


def test_query_scores_are_similarities(filled: str, store: VectorStore) -> None:
    matches = store.query(filled, unit(1, 0, 0), 3, None)
    assert [m.id for m in matches] == ["int1", "float25", "none"]
    assert matches[0].score == pytest.approx(1.0, abs=1e-5)
    assert matches[0].score > matches[1].score > matches[2].score
    assert matches[0].metadata == {"n": 1, "kind": "a", "flag": True}


@pytest.mark.parametrize(("where", "expected"), FILTER_CASES)
def test_filters_match_the_sql_side(
    filled: str, store: VectorStore, where: FilterNode, expected: list[str]
) -> None:
    matches = store.query(filled, unit(1, 1, 1), 10, where)
    assert sorted(m.id for m in matches) == expected


def test_rare_filter_matches_are_not_lost(store: VectorStore, name: str) -> None:
    """Filtering happens inside the index, not top_k-then-filter."""
    store.ensure_collection(name, 3, "toy")
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 3)).astype(np.float32)
    metadata = [{"rare": i == 299} for i in range(300)]
    store.upsert(name, [f"r{i}" for i in range(300)], vectors, metadata)
    matches = store.query(name, unit(1, 0, 0), 1, cond("rare", Op.EQ, True))
    assert [m.id for m in matches] == ["r299"]


def test_get_delete_count_list(filled: str, store: VectorStore) -> None:
    got = store.get(filled, ["int1", "missing"], include_vectors=True)
    assert [g.id for g in got] == ["int1"]
    assert got[0].vector is not None and got[0].vector.shape == (3,)
    assert store.count(filled) == 5
    assert store.delete(filled, ["int1", "missing"], None) == 1
    assert store.delete(filled, [], cond("kind", Op.EQ, "a")) == 1
    assert store.count(filled) == 3
    first, more = store.list_ids(filled, None, 2, None)
    assert (first, more) == (["float25", "none"], True)
    assert store.list_ids(filled, first[-1], 2, None) == (["str"], False)


def test_list_ids_pages_by_id_through_deletions(
    store: VectorStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records deleted between pages (seen or not yet seen) never make a
    surviving record skipped or listed twice; small chunks exercise the seams."""
    monkeypatch.setattr(store_module, "_SCAN_CHUNK", 4)
    store.ensure_collection(name, 3, "toy")
    ids = [f"id-{i:02d}" for i in range(40)]
    order = np.random.default_rng(7).permutation(len(ids))  # stored out of id order
    shuffled = [ids[i] for i in order]
    store.upsert(name, shuffled, np.stack([unit(1, 0, 0)] * 40), [{"n": int(i)} for i in order])
    listed: list[str] = []
    deleted: set[str] = set()
    after = None
    while True:
        page, more = store.list_ids(name, after, 5, None)
        listed.extend(page)
        # Two already listed, one not yet: offset paging would skip records.
        unseen = [i for i in ids if i not in deleted and i not in listed]
        gone = [*page[:2], *unseen[-1:]]
        store.delete(name, gone, None)
        deleted.update(gone)
        if not more:
            break
        after = page[-1]
    survivors = [i for i in ids if i not in deleted]
    assert [i for i in listed if i not in deleted] == survivors
    assert len(listed) == len(set(listed))


def test_a_deletion_during_a_pass_does_not_skip_ids(
    store: VectorStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within one page's pass over the ids, a deletion between two chunk
    reads shifts the next chunk: the pass is detected void and redone."""
    monkeypatch.setattr(store_module, "_SCAN_CHUNK", 3)
    store.ensure_collection(name, 3, "toy")
    ids = [f"r{i:02d}" for i in range(12)]
    store.upsert(name, ids, np.stack([unit(0, 1, 0)] * 12), [{}] * 12)
    collection = store._get(name)
    reads = 0

    class DeletingOnce:
        """The collection, with a record deleted right after the first read."""

        def get(self, **kwargs: object) -> object:
            nonlocal reads
            result = collection.get(**kwargs)
            reads += 1
            if reads == 1:
                collection.delete(ids=["r00"])
            return result

    monkeypatch.setattr(store, "_get", lambda _name: DeletingOnce())
    page, more = store.list_ids(name, None, 20, None)
    assert (page, more) == (ids[1:], False)


def test_dimension_is_enforced(filled: str, store: VectorStore) -> None:
    with pytest.raises(DimensionMismatch, match="3"):
        store.upsert(filled, ["x"], np.zeros((1, 4), dtype=np.float32), [{}])
    with pytest.raises(DimensionMismatch):
        store.query(filled, np.zeros(5, dtype=np.float32), 1, None)


def test_upsert_replaces(filled: str, store: VectorStore) -> None:
    store.upsert(filled, ["int1"], np.stack([unit(0, 0, 1)]), [{"n": 99}])
    got = store.get(filled, ["int1"], include_vectors=False)[0]
    assert got.metadata == {"n": 99}
    assert store.count(filled) == 5


def test_where_translation() -> None:
    assert to_where(cond("a", Op.IN, 1, 2)) == {"a": {"$in": [1, 2]}}
    assert to_where(AllOf((cond("a", Op.EQ, 1),))) == {"a": {"$eq": 1}}
    assert to_where(AnyOf((cond("a", Op.EQ, 1), cond("b", Op.NE, "x")))) == {
        "$or": [{"a": {"$eq": 1}}, {"b": {"$ne": "x"}}]
    }


def test_second_owner_of_a_directory_is_refused(tmp_path: Path) -> None:
    first = VectorStore(vector_settings(tmp_path / "chroma"))
    first.open()
    try:
        with pytest.raises(StoreLocked, match=r"pid \d+"):
            VectorStore(vector_settings(tmp_path / "chroma")).open()
    finally:
        first.close()
    # Released on close: the directory can be opened again.
    again = VectorStore(vector_settings(tmp_path / "chroma"))
    again.open()
    again.close()
