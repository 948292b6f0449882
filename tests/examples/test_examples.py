"""The Node and Go examples (examples/node, examples/go) run against a real
metadata service paired with the session's real vector service.

Each is skipped with a reason when its toolchain is missing (node/npm; go,
protoc, protoc-gen-go, protoc-gen-go-grpc and Debian's Go libraries). The
npm install and the Go build start before the services do, in the
background, so they overlap the model load; npm runs only when
node_modules is missing or package-lock.json changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def _run(
    argv: list[str],
    cwd: Path,
    address: str,
    collection: str,
    *,
    api_key: str = API_KEY,
    rc: int = 0,
) -> str:
    env = {**os.environ, "ASKMOJO_API_KEY": api_key, "ASKMOJO_COLLECTION": collection}
    done = subprocess.run(
        [*argv, address],
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


def test_node_example(builds: dict[str, Job], metadata_address: str) -> None:
    builds["node"].wait()
    output = _run(["node", "example.js"], NODE_DIR, metadata_address, "node-example")
    _check(output, "node", "node-example")
    # The service asks for the key: without it the example stops at once.
    refused = _run(
        ["node", "example.js"], NODE_DIR, metadata_address, "node-nokey", api_key="", rc=1
    )
    assert "FAILED: UNAUTHENTICATED" in refused, refused


def test_go_example(builds: dict[str, Job], metadata_address: str) -> None:
    job = builds["go"]
    job.wait()
    assert job.product is not None
    output = _run([str(job.product)], GO_DIR, metadata_address, "go-example")
    _check(output, "go", "go-example")
