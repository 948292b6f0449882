"""The README's metadata walk-through, run verbatim with real grpcurl against
the pair (as after `make run`), so it cannot rot."""

from __future__ import annotations

import json
import shlex

from tests.conftest import RunningServer
from tests.metadata_service.test_grpcurl import README_ADDRESS, grpcurl, walkthrough_commands


def test_readme_walkthrough_runs_verbatim(paired: RunningServer) -> None:
    outputs = []
    for command in walkthrough_commands():
        assert command[0] == ".venv/bin/grpcurl"
        args = [paired.address if arg == README_ADDRESS else arg for arg in command[1:]]
        result = grpcurl(*args)
        assert result.returncode == 0, f"{shlex.join(command)}\n{result.stderr}"
        outputs.append(result.stdout)
    assert "askmojo.metadata.v1.MetadataService" in outputs[0]
    assert '"status": "SERVING"' in outputs[1]
    replies = [json.loads(o) for o in outputs[2:]]
    upserted = next(r for r in replies if "results" in r)
    assert {r["state"] for r in upserted["results"]} == {"UPSERT_STATE_INDEXED"}
    searches = [r for r in replies if "hits" in r]
    assert searches[0]["hits"][0]["document_id"] == "wal.md"
    assert [h["document_id"] for h in searches[1]["hits"]] == ["grpc.md"]
    listed = next(r for r in replies if "documents" in r)
    assert [d["id"] for d in listed["documents"]] == ["wal.md"]
    reconciled = replies[-1]
    assert reconciled == {"dry_run": True}  # nothing to repair; zero counts are omitted
