"""The soak's ledger and checker (soak.ledger): what an acknowledged or an
unknown operation allows, and what counts as lost or orphaned. Pure, fast."""

from __future__ import annotations

from soak.ledger import (
    ABSENT,
    CollectionView,
    DocHistory,
    Ledger,
    Op,
    StoredDoc,
    StoredVector,
    Version,
    check,
    freeze,
)

A = Version("alpha soaktok1x0x1 words", freeze({"v": 1}))
B = Version("beta soaktok1x0x2 words", freeze({"v": 2}))
C = Version("gamma soaktok1x0x3 words", freeze({"v": 3}))


def test_the_last_acknowledged_write_is_the_only_state() -> None:
    h = DocHistory()
    h.record(Op("upsert", A, start=1, acked=True))
    h.record(Op("upsert", B, start=2, acked=True))
    assert h.possible() == {B}


def test_never_acknowledged_may_be_absent_or_the_unknown_write() -> None:
    h = DocHistory()
    h.record(Op("upsert", A, start=1, acked=False, until=1.5))
    assert h.possible() == {ABSENT, A}


def test_an_unknown_write_answered_by_the_server_cannot_land_after_the_next_ack() -> None:
    # UNAVAILABLE from a dead server: done by the time the error came back.
    h = DocHistory()
    h.record(Op("upsert", A, start=1, acked=False, until=1.5))
    h.record(Op("upsert", B, start=2, acked=True))
    assert h.possible() == {B}


def test_a_call_the_client_gave_up_on_may_land_after_the_next_ack() -> None:
    # DEADLINE_EXCEEDED: the server may still be working on it.
    h = DocHistory()
    h.record(Op("upsert", A, start=1, acked=False, until=61))
    h.record(Op("delete", ABSENT, start=30, acked=True))
    assert h.possible() == {ABSENT, A}
    h.record(Op("upsert", B, start=70, acked=True))
    assert h.possible() == {B}


def test_an_unknown_write_after_the_last_ack_is_either() -> None:
    h = DocHistory()
    h.record(Op("upsert", A, start=1, acked=True))
    h.record(Op("delete", ABSENT, start=2, acked=False, until=2.5))
    assert h.possible() == {A, ABSENT}


def test_merge_keeps_the_latest_ack_and_every_unknown() -> None:
    one, two = Ledger(), Ledger()
    one.record("upsert", "c", "d", A, 1, acked=True)
    two.record("upsert", "c", "d", B, 2, acked=True)
    two.record("upsert", "c", "e", C, 3, acked=False, until=4)
    one.count("upsert", True)
    two.count("upsert", True)
    one.merge(two)
    assert one.expected() == {("c", "d"): {B}, ("c", "e"): {ABSENT, C}}
    assert one.acknowledged == {"upsert": 2}


def _stored(v: Version, chunks: int = 1, generation: int = 1) -> StoredDoc:
    return StoredDoc(v.text, v.metadata, generation, "ab" * 32, chunks, "INDEXED")


def _vector(doc_id: str, ordinal: int, v: Version, generation: int = 1) -> StoredVector:
    meta = {**dict(v.metadata), "_doc": doc_id, "_ord": ordinal, "_gen": generation}
    return StoredVector(f"{doc_id}#{ordinal}", freeze({**meta, "_hash": "ab" * 8}))


def _view(docs: dict[str, StoredDoc], vectors: list[StoredVector]) -> CollectionView:
    view = CollectionView(docs=docs, vectors={v.id: v for v in vectors})
    view.keyword_found = set(docs)
    return view


def test_a_consistent_collection_has_nothing_lost_or_orphaned() -> None:
    views = {"c": _view({"d": _stored(A, 2)}, [_vector("d", 0, A), _vector("d", 1, A)])}
    found = check({("c", "d"): {A}, ("c", "gone"): {ABSENT}}, views)
    assert (found.lost, found.orphans) == ([], [])
    assert (found.documents_checked, found.live_documents) == (2, 1)


def test_an_acknowledged_document_missing_is_lost() -> None:
    found = check({("c", "d"): {A}}, {"c": _view({}, [])})
    assert len(found.lost) == 1 and "not stored" in found.lost[0]


def test_an_older_text_is_lost_but_either_state_is_accepted() -> None:
    views = {"c": _view({"d": _stored(A)}, [_vector("d", 0, A)])}
    assert len(check({("c", "d"): {B}}, views).lost) == 1
    assert check({("c", "d"): {A, B}}, views).lost == []


def test_a_missing_or_stale_vector_is_lost() -> None:
    assert len(check({("c", "d"): {A}}, {"c": _view({"d": _stored(A)}, [])}).lost) == 1
    missing = _view({"d": _stored(A)}, [])
    missing.dense_asked = {"d"}  # its embedding cannot be compared: still one finding
    assert len(check({("c", "d"): {A}}, {"c": missing}).lost) == 1
    stale_meta = {"c": _view({"d": _stored(A)}, [_vector("d", 0, B)])}
    assert any("metadata" in p for p in check({("c", "d"): {A}}, stale_meta).lost)
    stale_gen = {"c": _view({"d": _stored(A, generation=2)}, [_vector("d", 0, A, 1)])}
    assert any("generation" in p for p in check({("c", "d"): {A}}, stale_gen).lost)


def test_a_document_keyword_search_does_not_find_is_lost() -> None:
    view = _view({"d": _stored(A)}, [_vector("d", 0, A)])
    view.keyword_found = set()
    assert any("keyword" in p for p in check({("c", "d"): {A}}, {"c": view}).lost)


def test_a_vector_of_another_embedding_is_lost_one_search_misses_is_unreachable() -> None:
    view = _view({"d": _stored(A)}, [_vector("d", 0, A)])
    view.dense_asked = {"d"}
    view.dense_found = {"d"}  # even when a search finds it
    wrong = check({("c", "d"): {A}}, {"c": view})
    assert any("embedding" in p for p in wrong.lost), wrong
    view.embedding_matches = {"d"}
    view.dense_found = set()
    missed = check({("c", "d"): {A}}, {"c": view})
    assert missed.lost == [] and missed.orphans == []
    assert [p for p in missed.unreachable if "dense search" in p] == missed.unreachable != []
    assert missed.as_dict()["unreachable"] == 1


def test_extra_vectors_deleted_documents_and_leftover_collections_are_orphans() -> None:
    views = {"c": _view({"d": _stored(A)}, [_vector("d", 0, A), _vector("d", 1, A)])}
    assert len(check({("c", "d"): {A}}, views).orphans) == 1  # d#1: the text shrank
    resurrected = {"c": _view({"d": _stored(A)}, [_vector("d", 0, A)])}
    assert len(check({("c", "d"): {ABSENT}}, resurrected).orphans) == 1
    gone = check({("c", "d"): {ABSENT}}, {"c": CollectionView(docs=None)}, {"c-1234": 3})
    assert gone.lost == [] and len(gone.orphans) == 1


def test_the_distinctive_token_is_found_in_the_text() -> None:
    assert A.token == "soaktok1x0x1"
    assert Version("no token here", ()).token is None
