"""Seed reproducibility of the soak: the same seed gives the same requests
from each driver and the same kill schedule (their timing against the wall
clock varies with the machine). Drivers run against a stand-in client here,
one that fails some calls, so the recovery paths run too."""

from __future__ import annotations

import itertools
import threading
from types import SimpleNamespace
from typing import Any

from askmojo.client.errors import Unavailable
from askmojo.client.types import UpsertResult, UpsertState
from soak import driver as soak_driver
from soak.crasher import draws
from soak.driver import Driver
from soak.ledger import ABSENT, Version, freeze


class StandIn:
    """Answers like the service, failing every `fail_every`-th call with
    UNAVAILABLE, and sets `stop` after `calls` calls."""

    def __init__(self, stop: threading.Event, calls: int, fail_every: int = 0) -> None:
        self.stop, self.calls, self.fail_every, self.made = stop, calls, fail_every, 0
        self.requests: list[tuple[str, Any]] = []

    def _call(self, name: str, what: Any) -> None:
        self.made += 1
        self.requests.append((name, what))
        if self.made >= self.calls:
            self.stop.set()
        if self.fail_every and self.made % self.fail_every == 0:
            raise Unavailable("stand-in failure")

    def create_collection(self, name: str) -> Any:
        self._call("create", name)
        return SimpleNamespace(vector_collection=f"{name}-v")

    def collection(self, name: str) -> Any:
        return SimpleNamespace(vector_collection=f"{name}-v")

    def upsert(self, collection: str, docs: list[dict[str, Any]]) -> list[UpsertResult]:
        self._call("upsert", (collection, [(d["id"], d["text"], d["metadata"]) for d in docs]))
        return [UpsertResult(d["id"], UpsertState.INDEXED) for d in docs]

    def ingest(self, collection: str, docs: list[dict[str, Any]], **_: Any) -> Any:
        self._call("ingest", (collection, [(d["id"], d["text"]) for d in docs]))
        return iter([UpsertResult(d["id"], UpsertState.PENDING) for d in docs])

    def delete(self, collection: str, ids: Any = None, where: Any = None) -> None:
        self._call("delete", (collection, ids, where))

    def delete_collection(self, name: str) -> None:
        self._call("delete_collection", name)

    def search(self, collection: str, query: str, **kw: Any) -> list[Any]:
        self._call("search", (collection, query, kw["mode"]))
        return []


def _run(seed: int, fail_every: int = 0) -> tuple[Driver, StandIn]:
    stop = threading.Event()
    stand_in = StandIn(stop, calls=150, fail_every=fail_every)
    driver = Driver(1, seed, "unused", "unused")
    driver.run(stop, stand_in)  # type: ignore[arg-type]
    return driver, stand_in


def test_the_same_seed_sends_the_same_requests(monkeypatch: Any) -> None:
    monkeypatch.setattr(soak_driver.Driver, "_pause", lambda self, attempt: None)
    one, first = _run(7)
    two, second = _run(7)
    assert first.requests == second.requests
    assert one.operations == two.operations
    assert {op.split(":")[0] for op in one.operations} >= {"upsert", "search", "delete_documents"}
    _, other = _run(8)
    assert other.requests != first.requests


def test_failed_calls_are_sent_again_and_recorded_as_unknown(monkeypatch: Any) -> None:
    monkeypatch.setattr(soak_driver.Driver, "_pause", lambda self, attempt: None)
    driver, stand_in = _run(7, fail_every=3)
    assert driver.ledger.unknown and driver.ledger.acknowledged
    # Every document whose write was acknowledged last has exactly that state.
    for history in driver.ledger.docs.values():
        if history.acked is not None and not any(
            u.until > history.acked.start for u in history.unknown
        ):
            assert history.possible() == {history.acked.state}
    assert any(ABSENT in s for s in driver.ledger.expected().values())
    assert stand_in.made >= 150


def test_the_same_seed_gives_the_same_kill_schedule() -> None:
    weights = [2, 2, 1, 1, 1, 1, 2]
    first = list(itertools.islice(draws(5, 0.5, weights), 400))
    assert first == list(itertools.islice(draws(5, 0.5, weights), 400))
    assert first != list(itertools.islice(draws(6, 0.5, weights), 400))
    kills = [i for i in first if i is not None]
    assert 140 < len(kills) < 260 and set(kills) == set(range(7))
    assert kills.count(0) > kills.count(2)  # drawn by weight
    assert all(i is not None for i in itertools.islice(draws(5, 1.0, [1, 1, 1]), 50))


def test_a_target_coming_back_delays_its_own_kills_only(monkeypatch: Any) -> None:
    """A slow target's kills wait for it to be back; the others' go ahead."""
    from soak import crasher as soak_crasher
    from tests.waiting import wait_until

    slow_back = threading.Event()
    made: list[str] = []

    def target(name: str, back: Any) -> soak_crasher.Target:
        return soak_crasher.Target(name, lambda: made.append(name) or name, back)

    fakes = [target("slow", lambda: slow_back.wait(30)), target("fast", lambda: None)]
    monkeypatch.setattr(soak_crasher, "targets", lambda cluster, rng: fakes)
    crasher = soak_crasher.Crasher(
        None,  # type: ignore[arg-type]
        seed=3,
        kill_every=0.005,
        p=1.0,
        log=lambda m: None,
    )
    crasher.start()
    try:
        wait_until(lambda: crasher.kills.get("fast", 0) >= 20, what="fast kills go ahead")
        assert crasher.kills["slow"] == 1  # still coming back: its next kills wait
        slow_back.set()
        wait_until(lambda: crasher.kills.get("slow", 0) >= 2, what="the slow target's next kill")
    finally:
        slow_back.set()
        crasher.stop()
    assert made == crasher.schedule


def test_a_delete_by_filter_removes_what_surely_matches_and_leaves_the_rest(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(soak_driver.Driver, "_pause", lambda self, attempt: None)
    driver = Driver(1, 7, "unused", "unused")
    driver.client = StandIn(threading.Event(), calls=1000)  # type: ignore[assignment]
    alpha = Version("a soaktok7x1x1", freeze({"kind": "alpha"}))
    beta = Version("b soaktok7x1x2", freeze({"kind": "beta"}))
    c = driver.collections[0]
    driver.ledger.record("upsert", c, "doc00", alpha, 1, acked=True)
    driver.ledger.record("upsert", c, "doc01", beta, 1, acked=True)
    driver.ledger.record("upsert", c, "doc02", alpha, 1, acked=True)
    driver.ledger.record("upsert", c, "doc02", beta, 2, acked=False, until=float("inf"))
    driver.rng = SimpleNamespace(choice=lambda options: "alpha")  # type: ignore[assignment]
    driver._delete_by_filter(c)
    assert driver.ledger.possible(c, "doc00") == {ABSENT}
    assert driver.ledger.possible(c, "doc01") == {beta}
    assert driver.ledger.possible(c, "doc02") == {alpha, beta, ABSENT}
    assert driver.ledger.possible(c, "doc03") == {ABSENT}
