"""The README's `## Python client` example, extracted verbatim and run as a
script against the real pair (ASKMOJO_ADDRESS pointing at it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Python client", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Python client section"
    return match.group(1)


def test_readme_example_runs_as_written(paired: RunningServer, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ASKMOJO_ADDRESS": paired.address},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The filter leaves the 2019 document out; the WAL one is found.
    assert len(lines) == 1, done.stdout
    assert re.fullmatch(r"0\.\d{3} wal: WAL lets readers read while one writes\.", lines[0])
