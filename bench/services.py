"""Real service processes for benchmarks and process-level tests:
`python -m vector_service` / `python -m metadata_service` on a free port,
started, waited for through the gRPC health service, measured, stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """`python -m <module>` as a real process on a fixed port (so it can be
    killed with SIGKILL and started again on the same port)."""

    def __init__(self, module: str, port: int, env: dict[str, str], log: Path) -> None:
        self.module = module
        self.port = port
        self.env = {**os.environ, **env, "LOG_FORMAT": "json"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log
            )
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited: {self.log.read_text()}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        # Not left running (with its embedding workers) after the run gives up on it.
        self.stop()
        raise RuntimeError(f"{self.module} did not become SERVING: {self.log.read_text()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- resources -------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """User + system CPU time of this process and its live descendants
        so far (a descendant that exited takes its time with it)."""
        assert self.proc is not None
        return sum(cpu_seconds(pid) for pid in [self.proc.pid, *descendants(self.proc.pid)])

    def own_cpu_seconds(self) -> float:
        """User + system CPU time of the service process alone (not its
        embedding workers or other children)."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def rss_mib(self) -> dict[str, float]:
        """Resident memory of this process and of each descendant (the
        embedding workers, production worker processes), in MiB."""
        assert self.proc is not None
        out = {"service": rss_mib(self.proc.pid)}
        for index, pid in enumerate(descendants(self.proc.pid)):
            rss = rss_mib(pid)
            if rss:  # a resource tracker or a process that just exited
                out[f"child_{index}"] = rss
        return out


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command (which may hold spaces), from field 3 on:
    # utime and stime are fields 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found
