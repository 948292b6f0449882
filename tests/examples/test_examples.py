"""The Node and Go examples (examples/node, examples/go) run against a real
metadata service paired with the session's real vector service.

Each is skipped with a reason when its toolchain is missing (node/npm; go,
protoc, protoc-gen-go, protoc-gen-go-grpc and Debian's Go libraries). The
npm install and the Go build start before the services do, in the
background, so they overlap the model load; npm runs only when
node_modules is missing or package-lock.json changed.

Each example reaches the service through a METADATA_ADDRESS list whose
other replicas take no calls: one where nothing listens, and for Go (whose
gRPC checks health on the client side; grpc-js does not) one whose health
reports the metadata service NOT_SERVING and that implements nothing else.
The run without a key shows ASKMOJO_ADDRESS taking precedence.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from askmojo.common.targets import METADATA_SERVICE
from metadata_service.server import prepare_database
from tests.conftest import RunningServer, metadata_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "examples" / "node"
GO_DIR = ROOT / "examples" / "go"
GOCODE = Path("/usr/share/gocode")
API_KEY = "examples-api-key"
INSTALL_TIMEOUT = 240
RUN_TIMEOUT = 120
# npm's errors when the registry cannot be reached (an offline laptop).
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ENETUNREACH")


@dataclass
class Job:
    """A toolchain step running in the background, or why it cannot run."""

    skip: str | None = None
    process: subprocess.Popen[str] | None = None
    what: str = ""
    product: Path | None = None

    def wait(self) -> None:
        if self.skip is not None:
            pytest.skip(self.skip)
        if self.process is None:
            return
        try:
            out, _ = self.process.communicate(timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            pytest.fail(f"{self.what} took over {INSTALL_TIMEOUT} s")
        if self.process.returncode != 0 and any(e in out for e in _OFFLINE):
            pytest.skip(f"{self.what}: the package registry is unreachable:\n{out[-1000:]}")
        if self.process.returncode != 0:
            pytest.fail(f"{self.what} failed ({self.process.returncode}):\n{out[-4000:]}")


def _lock_digest() -> str:
    return hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()


def _start_npm() -> Job:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return Job(
            skip=f"{' and '.join(missing)} not installed: the Node example needs node and npm"
        )
    stamp = NODE_DIR / "node_modules" / ".askmojo-lock-sha256"
    if stamp.exists() and stamp.read_text() == _lock_digest():
        return Job()
    # npm ci: exactly the lock file's versions; then the stamp, so the next
    # run skips npm unless package-lock.json changes.
    script = (
        "npm ci --ignore-scripts --no-audit --no-fund --loglevel=error "
        f"&& printf %s {_lock_digest()} > node_modules/.askmojo-lock-sha256"
    )
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=NODE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Job(process=process, what="npm ci in examples/node")


def _start_go_build(workspace: Path) -> Job:
    tools = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return Job(
            skip=f"{', '.join(missing)} not installed (Debian: golang-go protobuf-compiler "
            "protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev)"
        )
    if not (GOCODE / "src" / "google.golang.org" / "grpc").is_dir():
        return Job(skip=f"gRPC for Go not in {GOCODE} (Debian: golang-google-grpc-dev)")
    binary = workspace / "askmojo-go-example"
    # Stubs generated from protos/ at every run: they cannot drift from them.
    script = f"'{GO_DIR}/gen.sh' '{workspace}' && go build -o '{binary}' ."
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{workspace}:{GOCODE}",
        "GOFLAGS": "",
    }
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=GO_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return Job(process=process, what="Go stub generation and build", product=binary)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Job]]:
    jobs = {
        "node": _start_npm(),
        "go": _start_go_build(tmp_path_factory.mktemp("gopath")),
    }
    yield jobs
    for job in jobs.values():
        if job.process is not None and job.process.poll() is None:
            job.process.kill()
            job.process.communicate()


@pytest.fixture(scope="module")
def metadata_address(
    builds: dict[str, Job],
    tmp_path_factory: pytest.TempPathFactory,
    vector_server: RunningServer,
) -> Iterator[str]:
    """A metadata service on SQLite, paired with the session's vector
    service, asking for an API key (the examples send ASKMOJO_API_KEY)."""
    settings = metadata_settings(
        tmp_path_factory.mktemp("examples") / "metadata.db",
        vector_service_address=vector_server.address,
        index_poll_seconds=0.2,
        index_max_backoff=0.5,
        api_key=API_KEY,
        vector_service_api_key=None,
    )
    prepare_database(settings)
    with RunningServer.metadata(settings) as running:
        yield running.address


@pytest.fixture(scope="module")
def dead_address() -> Iterator[str]:
    """127.0.0.1:<port> where nothing listens: the port is bound (so no one
    else takes it) but never listening, so every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def not_serving_address() -> Iterator[str]:
    """A replica that is up but not ready (starting, draining): its health
    reports the metadata service NOT_SERVING and it implements nothing else,
    so a call sent to it would fail UNIMPLEMENTED."""
    health = HealthServicer()
    health.set(METADATA_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def _run(
    argv: list[str],
    cwd: Path,
    collection: str,
    addresses: dict[str, str],
    *,
    api_key: str = API_KEY,
    rc: int = 0,
) -> str:
    """Runs an example with `addresses` (ASKMOJO_ADDRESS, METADATA_ADDRESS)
    as its only address settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("ASKMOJO_ADDRESS", "METADATA_ADDRESS")}
    env.update(addresses, ASKMOJO_API_KEY=api_key, ASKMOJO_COLLECTION=collection)
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    print(output)  # shown by pytest -rP, and with a failure
    assert done.returncode == rc, output
    return output


def _check(output: str, language: str, collection: str) -> None:
    assert f"OK {language} example: collection {collection}" in output, output
    assert "expected error: ALREADY_EXISTS (6)" in output, output
    assert "expected error: INVALID_ARGUMENT (3)" in output, output
    assert "field violation: top_k:" in output, output


def test_node_example(builds: dict[str, Job], metadata_address: str, dead_address: str) -> None:
    builds["node"].wait()
    replicas = f"{dead_address},{metadata_address}"
    output = _run(["node", "example.js"], NODE_DIR, "node-example", {"METADATA_ADDRESS": replicas})
    _check(output, "node", "node-example")
    assert f"metadata service at ipv4:{replicas}" in output, output
    # The service asks for the key: without it the example stops at once.
    refused = _run(
        ["node", "example.js"],
        NODE_DIR,
        "node-nokey",
        {"ASKMOJO_ADDRESS": metadata_address, "METADATA_ADDRESS": dead_address},
        api_key="",
        rc=1,
    )
    assert "FAILED: UNAUTHENTICATED" in refused, refused


def test_go_example(
    builds: dict[str, Job],
    metadata_address: str,
    dead_address: str,
    not_serving_address: str,
) -> None:
    job = builds["go"]
    job.wait()
    assert job.product is not None
    replicas = f"{dead_address},{not_serving_address},{metadata_address}"
    output = _run([str(job.product)], GO_DIR, "go-example", {"METADATA_ADDRESS": replicas})
    _check(output, "go", "go-example")
    refused = _run(
        [str(job.product)],
        GO_DIR,
        "go-nokey",
        {"ASKMOJO_ADDRESS": metadata_address, "METADATA_ADDRESS": dead_address},
        api_key="",
        rc=1,
    )
    assert "code = Unauthenticated" in refused, refused
