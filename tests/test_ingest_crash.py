"""kill -9 of a real ``hsearch ingest`` mid-run, then a re-run: the same points as an uninterrupted run.

The kill point is made deterministic by a test-only hook (documented in ``plugin/ingest.py``):
``HSEARCH_TEST_STALL_AFTER_BATCHES=3`` makes the ingest stop inside batch 3, after its points are
written and before the batch is finished, print ``stalled`` and sleep; the test SIGKILLs it there.
The embedding cache is shared with the test session's (content-addressed, so safe) to encode once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
N, BATCH = 400, 50


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HSEARCH_TEST_STALL_AFTER_BATCHES"}
    return {**env, "HSEARCH_HOME": str(home), **extra}


def _ingest_cmd(collection: str) -> list[str]:
    return [sys.executable, "-m", "plugin.cli", "ingest", "fashion-mnist:test", "--limit", str(N),
            "--batch-size", str(BATCH), "--collection", collection, "-q"]


def _points(home: Path, collection: str) -> list[tuple[int, str]]:
    from plugin.store import open_store

    with open_store(home / "stores", collection=collection) as s:
        return sorted((r.id, r.payload["sha256"]) for page in s.scroll(with_vectors=False) for r in page)


@pytest.mark.slow
def test_kill_9_mid_ingest_then_rerun_equals_an_uninterrupted_run(tmp_path):
    home = tmp_path / "home"
    shared = Path(os.environ["HSEARCH_HOME"]) / "cache" / "embeddings"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "embeddings").symlink_to(shared)

    ref = subprocess.run(_ingest_cmd("ref"), cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    assert json.loads(ref.stdout)["added"] == N

    proc = subprocess.Popen(_ingest_cmd("crash"), cwd=REPO, env=_env(home, HSEARCH_TEST_STALL_AFTER_BATCHES="3"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(600, proc.kill)  # a run that never stalls must not hang the suite
    watchdog.start()
    try:
        line = proc.stderr.readline()
        assert line.strip() == "stalled", line + proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        watchdog.cancel()
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()

    # the killed process's lock died with it: this opens the collection, and three batches are in
    partial = _points(home, "crash")
    assert len(partial) == 3 * BATCH

    again = subprocess.run(_ingest_cmd("crash"), cwd=REPO, env=_env(home), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    st = json.loads(again.stdout)
    assert (st["existing"], st["added"], st["points"]) == (3 * BATCH, N - 3 * BATCH, N)

    got, want = _points(home, "crash"), _points(home, "ref")
    assert got == want
    assert len({h for _, h in got}) == len(got) == N  # no image twice
