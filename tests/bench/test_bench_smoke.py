"""The benchmark harness end to end in its quick mode: every scenario is measured and
written to the JSON, the page and the plot. No speed is asserted here; the targets live in
the benchmark itself (docs/benchmarks.md).

The benchmark model package is cached in bench/.cache (git-ignored); the first run builds
it (about 10 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.records import (
    GENERATE,
    IDLE_MEMORY,
    LOCKSTEP,
    RAW,
    RNNSERVE,
    SCENARIOS,
    SERVERS,
    VOCABULARY,
    Record,
    vocabulary_scenario,
)
from bench.targets import evaluate

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_records_every_scenario(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--warmup=0.1",
            "--duration=0.3",
            "--out",
            str(tmp_path),
            "--docs",
            str(docs),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]

    result = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    records = result["records"]
    failed = [(r["system"], r["scenario"], r["error"]) for r in records if r["error"]]
    assert not failed
    words = vocabulary_scenario(1000)  # the quick plan's one word model
    assert {r["scenario"] for r in records} == set(SCENARIOS) - {VOCABULARY} | {words}
    assert {
        (r["system"], r["concurrency"] or r["batch"]) for r in records if r["scenario"] == words
    } == {(RAW, 1), (RAW, 64), (RNNSERVE, 1), (RNNSERVE, 64)}
    for system in SERVERS:
        assert {r["scenario"] for r in records if r["system"] == system} >= {LOCKSTEP, GENERATE}
    for r in records:
        if r["skipped"]:
            continue
        if r["scenario"] == IDLE_MEMORY:
            assert r["sessions"] > 0 and r["rss_after_bytes"] > 0, r
        else:
            figure = r["steps_per_s"] or r["tokens_per_s"] or r["total_ms"]
            assert figure and figure > 0, r
    assert result["machine"]["nproc"] >= 1
    assert result["command"].endswith(f"--docs {docs}")

    page = docs.read_text(encoding="utf-8")
    assert page.index("## Ratios") < page.index("## Targets") < page.index("## Lockstep")
    assert "| 1k | 32 |" in page  # the large-vocabulary table's row of the quick plan
    for verdict in evaluate([Record.from_json(r) for r in records]):
        assert f"| {verdict.target} |" in page
        assert f"**{verdict.status}**" in page
    assert (tmp_path / "throughput.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_the_scale_out_benchmark_measures_every_deployment(tmp_path: Path) -> None:
    """bench.scaleout briefly: memory, Redis, three replicas behind nginx, no errors."""
    from support import MissingProgram

    from bench import scaleout

    out = tmp_path / "scaleout.json"
    argv = ["--concurrency", "2", "--warmup", "0.2", "--duration", "0.5", "--out", str(out)]
    try:
        assert scaleout.main(argv) == 0
    except MissingProgram as missing:
        if os.environ.get("CI"):
            raise  # CI installs redis-server and nginx (make system-deps)
        pytest.skip(str(missing))
    records = json.loads(out.read_text())["records"]
    assert [r["system"] for r in records] == [scaleout.MEMORY, scaleout.REDIS, scaleout.REPLICAS]
    assert all(r["steps_per_s"] > 0 and r["p50_ms"] > 0 for r in records)
