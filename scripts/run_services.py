"""`make run`: both services in the foreground on embedded defaults.

Ctrl-C (or SIGTERM) stops both cleanly; if one exits on its own, the other is
stopped too, so a half-running pair never lingers. The vector service starts
first: the metadata service is the front door and depends on it.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time


def _runnable(package: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.__main__") is not None
    except ModuleNotFoundError:
        return False


def main() -> int:
    os.makedirs("data", exist_ok=True)
    modules = ["vector_service", "metadata_service"]
    available = [m for m in modules if _runnable(m)]
    for missing in sorted(set(modules) - set(available)):
        print(f"run: {missing} is not built yet; starting the others", file=sys.stderr)
    procs = [subprocess.Popen([sys.executable, "-m", module]) for module in available]

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
