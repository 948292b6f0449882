"""The crasher: on a seeded schedule, SIGKILLs a random target of the shape
and brings it back.

Every `kill_every` seconds it draws (from its own seeded generator, whatever
happened before) whether to strike (probability `p`) and which target, so a
seed always gives the same sequence of kills. Their moments relative to the
drivers' operations vary from run to run: the machine's speed decides how
far the drivers got. A target still coming back from an earlier kill is
waited for (the kill is late, not skipped), so the sequence holds.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text

from soak.cluster import Cluster, Process, embedding_workers, living_children, wait_for

RECOVERY_TIMEOUT = 240.0


@dataclass
class Target:
    name: str
    kill: Callable[[], str | None]  # what was killed (None: nothing to kill)
    back: Callable[[], None]  # restarts it (if needed) and waits until it serves
    # The processes (or engines) the next kill hits: it waits until they are
    # back from an earlier kill.
    hits: Callable[[], set[str]] | None = None
    # How often it is drawn relative to the others.
    weight: int = 1

    def resources(self) -> set[str]:
        return self.hits() if self.hits is not None else {self.name}


def _whole(process: Process, weight: int = 1) -> Target:
    def kill() -> str:
        process.kill()
        return f"{process.name} (pid group {process.proc.pid if process.proc else '?'})"

    def back() -> None:
        process.start()

    return Target(process.name, kill, back, weight=weight)


def _metadata_worker(process: Process, workers: int) -> Target:
    killed: list[int] = []

    def kill() -> str | None:
        children = sorted(living_children(process))
        if not children:
            return None
        killed[:] = [children[0]]
        os.kill(children[0], signal.SIGKILL)
        return f"{process.name} worker pid {children[0]}"

    def replaced() -> bool:
        children = living_children(process)
        return killed[0] not in children and len(children) >= workers and process.ready()

    def back() -> None:
        # The supervisor replaces it; the service is back when it serves with
        # all its workers again.
        wait_for(
            replaced,
            RECOVERY_TIMEOUT,
            f"{process.name}'s workers replaced",
        )

    return Target(f"{process.name}-worker", kill, back, lambda: {process.name}, weight=2)


def _embedding_worker(processes: list[Process], rng: random.Random) -> Target:
    chosen: list[Process] = []

    def hits() -> set[str]:
        chosen[:] = [processes[rng.randrange(len(processes))]]
        return {chosen[0].name}

    killed: list[int] = []

    def kill() -> str | None:
        process = chosen[0]
        pids = embedding_workers(process)
        if not pids:
            return None
        killed[:] = [pids[0]]
        os.kill(pids[0], signal.SIGKILL)
        return f"{process.name} embedding worker pid {pids[0]}"

    def restarted() -> bool:
        pids = embedding_workers(chosen[0])
        return bool(pids) and killed[0] not in pids and chosen[0].ready()

    def back() -> None:
        process = chosen[0]
        wait_for(
            restarted,
            RECOVERY_TIMEOUT,
            f"{process.name}'s embedding pool restarted",
        )

    return Target("embedding-worker", kill, back, hits)


def _postgres(cluster: Cluster) -> Target:
    def kill() -> str:
        engine = cluster.engine()
        try:
            with engine.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM"
                        " pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()) t"
                    ),
                    {"db": cluster.pg_database},
                ).scalar_one()
        finally:
            engine.dispose()
        return f"{killed} PostgreSQL backends terminated"

    def back() -> None:
        wait_for(lambda: all(p.ready() for p in cluster.metadata), RECOVERY_TIMEOUT, "metadata")

    return Target("postgres-connections", kill, back, lambda: {"postgres"}, weight=2)


def targets(cluster: Cluster, rng: random.Random) -> list[Target]:
    """Every kind of kill of the shape. The vector side's are drawn half as
    often as the metadata side's: a vector service or an embedding worker
    loads the model again (tens of seconds on a busy machine), and a kill
    waits for its target to be back."""
    found = [_whole(p, weight=2) for p in cluster.metadata]
    if cluster.metadata_workers > 1:
        found += [_metadata_worker(p, cluster.metadata_workers) for p in cluster.metadata]
    found += [_whole(p) for p in cluster.vector]
    found.append(_embedding_worker(cluster.vector, rng))
    if cluster.chroma is not None:
        found.append(_whole(cluster.chroma))
    if cluster.pg_database is not None:
        found.append(_postgres(cluster))
    return found


def draws(seed: int, p: float, weights: Sequence[int]) -> Iterator[int | None]:
    """The schedule: per tick, the index of the target to kill (drawn by
    `weights`), or None (no kill this tick). Drawn from the seed alone."""
    rng = random.Random(f"crasher-{seed}")
    indexes = range(len(weights))
    while True:
        strike = rng.random() < p
        index = rng.choices(indexes, weights)[0]
        yield index if strike else None


@dataclass
class Crasher:
    cluster: Cluster
    seed: int
    kill_every: float
    p: float
    log: Callable[[str], None] = print
    kills: dict[str, int] = field(default_factory=dict)
    missed: dict[str, int] = field(default_factory=dict)
    # Kills drawn but not made when the run ended (their target was still
    # coming back).
    unfired: list[str] = field(default_factory=list)
    schedule: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    recovery_seconds: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _recovering: set[str] = field(default_factory=set)
    _recoveries: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="crasher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more kills; returns once every killed target is back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(RECOVERY_TIMEOUT + 60)
        for thread in self._recoveries:
            thread.join(RECOVERY_TIMEOUT + 60)

    def _busy(self, names: set[str]) -> bool:
        with self._lock:
            return bool(names & self._recovering)

    def _run(self) -> None:
        chosen = targets(self.cluster, random.Random(f"crasher-pick-{self.seed}"))
        schedule = draws(self.seed, self.p, [t.weight for t in chosen])
        started = time.monotonic()
        ticks = 0
        # Kills drawn and not yet made: a target still coming back from an
        # earlier kill is killed once it is back (late, not skipped), while
        # kills of other targets go ahead; each target's kills keep the
        # seed's order.
        queued: list[tuple[Target, set[str]]] = []
        while not self._stop.is_set() and not self.errors:
            if time.monotonic() >= started + (ticks + 1) * self.kill_every:
                ticks += 1
                index = next(schedule)
                if index is not None:
                    target = chosen[index]
                    queued.append((target, target.resources()))
            blocked: set[str] = set()
            waiting: list[tuple[Target, set[str]]] = []
            for target, names in queued:
                if names & blocked or self._busy(names):
                    blocked |= names
                    waiting.append((target, names))
                    continue
                blocked |= names
                self._kill(target, names, started)
            queued = waiting
            # The crasher's cadence (a schedule, not an ordering of events).
            self._stop.wait(0.05)
        self.unfired = [target.name for target, _ in queued]

    def _kill(self, target: Target, names: set[str], started: float) -> None:
        self.schedule.append(target.name)
        try:
            what = target.kill()
        except Exception as exc:  # reported, and the soak fails on it
            self.errors.append(f"{target.name}: {type(exc).__name__}: {exc}")
            return
        if what is None:  # e.g. the embedding pool between workers
            self.log(f"crasher: no process of {target.name} to kill right now")
            self.missed[target.name] = self.missed.get(target.name, 0) + 1
            return
        self.kills[target.name] = self.kills.get(target.name, 0) + 1
        self.log(f"[{time.monotonic() - started:7.1f}s] kill #{len(self.schedule)}: {what}")
        with self._lock:
            self._recovering |= names
        thread = threading.Thread(target=self._recover, args=(target, names), daemon=True)
        self._recoveries.append(thread)
        thread.start()

    def _recover(self, target: Target, names: set[str]) -> None:
        begun = time.monotonic()
        try:
            target.back()
        except Exception as exc:  # reported, and the soak fails on it
            self.errors.append(f"{target.name}: {type(exc).__name__}: {exc}")
            self.log(f"crasher: {target.name} did not come back: {exc}")
            return
        self.recovery_seconds.append(time.monotonic() - begun)
        with self._lock:
            self._recovering -= names

    def total(self) -> int:
        return sum(self.kills.values())
