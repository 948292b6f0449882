"""`python -m soak [--shape single|scaled|both] [--seed N] [--minutes M]
[--kill-every S] [--p P] [--kills K]`: the crash soak of issue #13.

Per shape: start it, run the drivers and the crasher until K kills (or M
minutes), stop them, wait for every process to serve, wait for the outbox to
drain (time to converge), check the services against the ledger without
Reconcile; only if that finds anything (or the outbox did not drain), call
Reconcile on every collection as a user would and check again. Prints a
report, writes soak/results/latest.json, exits 1 when anything is lost or
orphaned (or a process could not be brought back).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from soak import check as checking
from soak.cluster import API_KEY, postgres_reachable, running, wait_for
from soak.crasher import Crasher
from soak.driver import Driver
from soak.ledger import Findings, Ledger, check

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def _log(message: str) -> None:
    print(message, flush=True)


def run_shape(
    shape: str,
    *,
    seed: int,
    minutes: float,
    kill_every: float,
    p: float,
    kills: int | None,
    clients: int,
    workdir: Path,
) -> dict[str, Any]:
    _log(f"== {shape}: seed {seed}, kill every {kill_every} s with p={p}, {clients} clients")
    began = time.monotonic()
    with running(shape, workdir / shape, REPO) as cluster:
        _log(f"{shape}: up in {time.monotonic() - began:.0f} s ({cluster.metadata_address})")
        stop = threading.Event()
        drivers = [Driver(i, seed, cluster.metadata_address, API_KEY) for i in range(clients)]
        failures: list[str] = []

        def body(driver: Driver) -> None:
            try:
                driver.run(stop)
            except Exception as exc:
                failures.append(f"driver {driver.index}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=body, args=(d,), daemon=True) for d in drivers]
        for t in threads:
            t.start()
        crasher = Crasher(cluster, seed, kill_every, p, log=_log)
        load_began = time.monotonic()
        crasher.start()
        deadline = load_began + minutes * 60
        while time.monotonic() < deadline and not crasher.errors:
            if kills is not None and crasher.total() >= kills:
                break
            time.sleep(0.5)  # the run's length: a schedule, not an ordering
        crasher.stop()
        stop.set()
        for t in threads:
            t.join(300)
        load_seconds = time.monotonic() - load_began
        wait_for(cluster.all_ready, 300, "every process SERVING")
        ledger = Ledger()
        vector_names: dict[str, set[str]] = {}
        for d in drivers:
            ledger.merge(d.ledger)
            for name, seen in d.vector_names.items():
                vector_names.setdefault(name, set()).update(seen)
        collections = ledger.collections() | set(vector_names)
        converge_seconds, backlog = checking.converge(cluster)
        _log(f"{shape}: outbox drained in {converge_seconds:.1f} s: {backlog}")
        views, leftovers = checking.observe(cluster, collections, vector_names)
        findings = check(ledger.expected(), views, leftovers)
        first = findings
        reconciled: dict[str, dict[str, int]] = {}
        needed = bool(findings.lost or findings.orphans) or not backlog.settled or backlog.failed
        if needed:
            _log(f"{shape}: without Reconcile: {_brief(findings)}; reconciling")
            reconciled = checking.reconcile(cluster, collections)
            _, backlog = checking.converge(cluster)
            views, leftovers = checking.observe(cluster, collections, vector_names)
            findings = check(ledger.expected(), views, leftovers)
        result = {
            "shape": shape,
            "seed": seed,
            "kill_every": kill_every,
            "p": p,
            "clients": clients,
            "load_seconds": round(load_seconds, 1),
            "acknowledged": dict(sorted(ledger.acknowledged.items())),
            "unknown_outcome": dict(sorted(ledger.unknown.items())),
            "errors": _merge_counts(d.errors for d in drivers),
            "kills": dict(sorted(crasher.kills.items())),
            "kills_total": crasher.total(),
            "kills_missed": crasher.missed,
            "kills_drawn_not_made": crasher.unfired,
            "kill_schedule": crasher.schedule,
            "recovery_seconds_max": round(max(crasher.recovery_seconds, default=0.0), 1),
            "crasher_errors": crasher.errors,
            "start_failures": {
                p.name: p.start_failures
                for p in [*cluster.metadata, *cluster.vector, *filter(None, [cluster.chroma])]
                if p.start_failures
            },
            "driver_failures": failures,
            "operations_sent": sum(len(d.operations) for d in drivers),
            "converge_seconds": round(converge_seconds, 1),
            "backlog_after": backlog.__dict__,
            "reconcile_needed": bool(needed),
            "before_reconcile": first.as_dict() if needed else None,
            "reconciled": reconciled,
            **findings.as_dict(),
            "logged_errors": logged_errors(cluster.workdir),
        }
        if failed(result) or needed:
            result["logs"] = str(_keep_logs(cluster.workdir, shape))
        return result


def logged_errors(directory: Path) -> dict[str, int]:
    """Error and critical lines the services logged, by message (a killed
    worker's replacement is expected and left out)."""
    found: dict[str, int] = {}
    for log in sorted(directory.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict) or entry.get("level") not in ("error", "critical"):
                continue
            message = str(entry.get("message", ""))
            if message.startswith("worker died"):
                continue
            key = f"{log.stem}: {message[:160]}"
            found[key] = found.get(key, 0) + 1
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def _keep_logs(directory: Path, shape: str) -> Path:
    kept = RESULTS / f"{shape}-logs"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    for log in directory.glob("*.log"):
        shutil.copy(log, kept / log.name)
    return kept


def _brief(f: Findings) -> str:
    return f"lost {len(f.lost)}, orphans {len(f.orphans)}: {(f.lost + f.orphans)[:5]}"


def _merge_counts(many: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in many:
        for k, n in counts.items():
            out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


def failed(result: dict[str, Any]) -> bool:
    backlog = result.get("backlog_after") or {}
    return bool(
        backlog.get("pending")
        or backlog.get("expired_leases")
        or result.get("lost")
        or result.get("orphans")
        or result.get("crasher_errors")
        or result.get("driver_failures")
    )


def report(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"== {result['shape']}: SKIPPED ({result['skipped']})"
    backlog = result["backlog_after"]
    lines = [
        f"== {result['shape']} (seed {result['seed']}): "
        + ("FAILED" if failed(result) else "passed"),
        f"  load: {result['load_seconds']} s, {result['clients']} clients,"
        f" {result['operations_sent']} operations sent",
        f"  acknowledged: {result['acknowledged']}",
        f"  unknown outcome (calls): {result['unknown_outcome']}",
        f"  kills ({result['kills_total']}): {result['kills']}"
        f" (longest recovery {result['recovery_seconds_max']} s)",
        f"  documents checked: {result['documents_checked']}"
        f" (live {result['live_documents']}, either-state {result['ambiguous_documents']})",
        f"  lost = {result['lost']}, orphans = {result['orphans']};"
        f" stored right but missed by a dense search of their own text: {result['unreachable']}",
        f"  chunks left PENDING: {backlog['pending']}, on an expired lease:"
        f" {backlog['expired_leases']}, FAILED: {backlog['failed']};"
        f" vector deletions left: {backlog['deletions']}",
        f"  time to converge: {result['converge_seconds']} s;"
        f" Reconcile needed: {'yes' if result['reconcile_needed'] else 'no'}",
    ]
    if result["before_reconcile"]:
        lines.append(f"  before Reconcile: {result['before_reconcile']}")
    if result["start_failures"]:
        exits = {name: len(f) for name, f in result["start_failures"].items()}
        lines.append(f"  exited while starting (started again): {exits}")
    if result["logged_errors"]:
        top = list(result["logged_errors"].items())[:8]
        lines.append(f"  errors the services logged: {top}")
    details = ("lost_details", "orphan_details", "unreachable_details")
    for key in (*details, "crasher_errors", "driver_failures", "logs"):
        if result.get(key):
            lines.append(f"  {key}: {result[key][:10]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--shape", choices=["single", "scaled", "both"], default="both")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--minutes", type=float, default=4.0, help="longest load per shape")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between draws")
    parser.add_argument("--p", type=float, default=1.0, help="probability a draw kills")
    parser.add_argument("--kills", type=int, default=None, help="end the load after K kills")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds: every process started is stopped

    signal.signal(signal.SIGTERM, interrupted)
    shapes = ["single", "scaled"] if args.shape == "both" else [args.shape]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="askmojo-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        for shape in shapes:
            reason = postgres_reachable() if shape == "scaled" else None
            if reason is not None:
                results.append({"shape": shape, "skipped": reason})
                continue
            results.append(
                run_shape(
                    shape,
                    seed=args.seed,
                    minutes=args.minutes,
                    kill_every=args.kill_every,
                    p=args.p,
                    kills=args.kills,
                    clients=args.clients,
                    workdir=workdir,
                )
            )
    print()
    print(
        "The same seed sends the same operations from each driver and draws the same kills"
        " in the same order; when they happen relative to the operations varies with the"
        " machine."
    )
    for result in results:
        print(report(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.output}")
    return 1 if any(failed(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
