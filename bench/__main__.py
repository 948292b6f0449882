"""`python -m bench [--quick] [--unscaled] [--only SECTION ...] [--out DIR]`

Runs the sections (embedding, pipeline, metadata) against real service
processes and in-process baselines, then writes `DIR/latest.json` and
`DIR/latest.md` (default DIR: bench/results). `make bench` runs it in full
(about 9 minutes on this 2-core VM, under 10 on a slow day: before each
section a short probe measures the machine, and a slow one gets less work),
`make bench-quick` with small sizes (under 2). Each section's time, speed and
sizes are printed and recorded.
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

from bench import calibration, embedding, metadata, pipeline, security
from bench.calibration import PROBE_RUNS
from bench.context import Context, Sizes

SECTIONS = {
    "embedding": embedding.run,
    "pipeline": pipeline.run,
    "metadata": metadata.run,
    "security": security.run,
}
# The counts each section uses (what its report line shows when scaled).
USES = {
    "embedding": ("embed_texts", "concurrent_texts"),
    "pipeline": ("ingest_docs", "search_queries", "latency_queries", "scale_small", "scale_large"),
    "metadata": ("metadata_docs",),
    "security": ("secured_docs", "secured_queries", "secured_texts"),
}
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
        "Sections: "
        + "; ".join(
            f"{name} {s['seconds']:.0f} s (speed {s['speed']:.2f} of the reference"
            + (f", counts scaled to {s['scaled_sizes']}" if s["scaled_sizes"] else "")
            + ")"
            for name, s in report["sections"].items()
        )
        + ".",
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
    parser.add_argument(
        "--unscaled",
        action="store_true",
        help="keep the sizes whatever the probe measures (a slow day then runs past 10 minutes;"
        " for showing a figure at its full size, e.g. scale_ingest_ratio's 20,000 chunks)",
    )
    args = parser.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes.full()
    workdir = Path(tempfile.mkdtemp(prefix="askmojo-bench-"))
    ctx = Context(sizes, workdir)
    started = time.perf_counter()
    command = "make bench-quick" if args.quick else "make bench"
    if args.only or args.unscaled:
        flags = ["--quick"] * args.quick + ["--unscaled"] * args.unscaled
        flags += ["--only", *args.only] if args.only else []
        command = f"python -m bench {' '.join(flags)}"
    sections: dict[str, dict[str, Any]] = {}
    try:
        for name in args.only or list(SECTIONS):
            section_started = time.perf_counter()
            speed = calibration.speed(ctx.thread_budget, runs=1 if args.quick else PROBE_RUNS)
            ctx.sizes = sizes if args.unscaled else sizes.scaled(speed)
            changed = {
                k: getattr(ctx.sizes, k)
                for k in USES[name]
                if getattr(ctx.sizes, k) != getattr(sizes, k)
            }
            print(
                f"== {name} (speed {speed:.2f} of the reference"
                + (f"; scaled to it: {changed}" if changed else "")
                + ")",
                flush=True,
            )
            SECTIONS[name](ctx)
            seconds = time.perf_counter() - section_started
            sections[name] = {
                "seconds": round(seconds, 1),
                "speed": round(speed, 2),
                "scaled_sizes": changed,
            }
            print(
                f"   {name}: {seconds:.0f} s ({time.perf_counter() - started:.0f} s so far)",
                flush=True,
            )
    finally:
        ctx.close()
    report = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(ctx),
        "sizes": vars(sizes),
        "sections": sections,
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
