"""`python -m bench [--quick] [--only SECTION ...] [--out DIR]`

Runs the sections (embedding, pipeline, metadata) against real service
processes and in-process baselines, then writes `DIR/latest.json` and
`DIR/latest.md` (default DIR: bench/results). `make bench` runs it in full
(under 10 minutes on 2 cores), `make bench-quick` with small sizes (under 2).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import embedding, metadata, pipeline
from bench.context import Context, Sizes

SECTIONS = {"embedding": embedding.run, "pipeline": pipeline.run, "metadata": metadata.run}
RESULTS = Path(__file__).resolve().parent / "results"


def machine(ctx: Context) -> dict[str, Any]:
    versions = {
        name: importlib.metadata.version(name)
        for name in ("torch", "sentence-transformers", "chromadb", "grpcio", "sqlalchemy")
    }
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "embedding_workers": ctx.settings.max_workers,
        "torch_threads_per_worker": ctx.settings.threads_per_worker,
        "baseline_torch_threads": ctx.thread_budget,
        **versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"`{report['command']}` — {report['date']}, {m['cpus']} CPUs ({m['cpu_model']}), "
        f"Python {m['python']}, torch {m['torch']}, chromadb {m['chromadb']}; "
        f"{m['embedding_workers']} embedding worker(s) x {m['torch_threads_per_worker']} torch "
        f"threads, baselines {m['baseline_torch_threads']} threads; each ratio the median of "
        f"{report['sizes']['repeat']} back-to-back pairs (metadata writes: "
        f"{report['sizes']['metadata_repeat']}); {report['seconds']:.0f} s.",
        "",
        "| key | ratio | target | numerator | denominator |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, r in report["ratios"].items():
        mark = "✅" if r["met"] else "❌"
        lines.append(
            f"| `{key}` | **{r['value']:.2f}** {mark} | ≥ {r['target']:.2f} | "
            f"{r['numerator']['value']:g} {r['unit']} — {r['numerator']['label']} | "
            f"{r['denominator']['value']:g} {r['unit']} — {r['denominator']['label']} |"
        )
    lines += ["", "| measure | value |", "| --- | --- |"]
    for key, value in report["measures"].items():
        lines.append(f"| {key} | `{json.dumps(value)}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json/.md go")
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    workdir = Path(tempfile.mkdtemp(prefix="askmojo-bench-"))
    ctx = Context(sizes, workdir)
    started = time.perf_counter()
    command = "make bench-quick" if args.quick else "make bench"
    if args.only:
        command = f"python -m bench {'--quick ' if args.quick else ''}--only {' '.join(args.only)}"
    try:
        for name in args.only or list(SECTIONS):
            print(f"== {name}", flush=True)
            section_started = time.perf_counter()
            SECTIONS[name](ctx)
            print(f"   ({time.perf_counter() - section_started:.0f} s)", flush=True)
    finally:
        ctx.close()
    report = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(ctx),
        "sizes": vars(sizes),
        "ratios": {k: r.as_json() for k, r in ctx.ratios.items()},
        "measures": ctx.measures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "latest.md").write_text(table)
    print("\n" + table)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
