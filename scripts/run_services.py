"""`make run`: both services in the foreground on embedded defaults.

Ctrl-C (or SIGTERM) stops both cleanly; if one exits on its own, the other is
stopped too, so a half-running pair never lingers. The vector service starts
first: the metadata service is the front door and depends on it, so it stops
first too (its in-flight calls may still need the vector service). Each gets
SHUTDOWN_GRACE_SECONDS plus a margin; a second Ctrl-C is passed on (the
services then stop faster). The services run in their own process group, so
a Ctrl-C reaches them once, through us, not twice.
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
    procs = [
        subprocess.Popen([sys.executable, "-m", module], process_group=0) for module in available
    ]
    grace = float(os.environ.get("SHUTDOWN_GRACE_SECONDS", "10"))

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: the services hurry
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    for proc in reversed(procs):  # the metadata service first
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    failed = [p for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    sys.exit(main())
