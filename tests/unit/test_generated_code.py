"""The committed gRPC code is what the pinned generator makes from protos/,
and the protos pass `buf lint`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _generated(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in (root / "askmojo").rglob("*_pb2*.py*")
        # Only sources and stubs: a test run leaves bytecode in __pycache__.
        if path.suffix in {".py", ".pyi"}
    }


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh, committed = _generated(tmp_path), _generated(ROOT)
    assert sorted(fresh) == sorted(committed), "generated files added or removed: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code, run `make protos`: {stale}"


def test_protos_pass_buf_lint() -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed, so buf (from @bufbuild/buf) cannot be fetched")
    result = subprocess.run(
        [str(ROOT / "scripts" / "buf.sh"), "lint"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
