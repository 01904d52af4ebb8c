"""docs/grafana/rnnserve-dashboard.json: a well-formed dashboard whose every query names
metrics and labels a real server exports (and, where promtool is installed, valid PromQL)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import ServerThread, server_config

from rnnserve import Client

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "rnnserve-dashboard.json"
METRIC = re.compile(r"\b((?:rnnserve|process|python)_[a-z_]+)\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
SELECTOR_LABELS = re.compile(r"[{,]\s*([a-z_]+)\s*(?:=~|!=|=)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_the_panels_tile_the_grid() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}  # fmt: skip
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in dashboard()["templating"]["list"]} == {
        "datasource", "instance", "model"
    }  # fmt: skip


@pytest.fixture(scope="module")
def exported(models_dir: Path, model_name: str) -> Iterator[dict[str, set[str]]]:
    """Every metric family a real server exports after some calls: name -> its labels."""
    with (
        ServerThread(server_config(models_dir, metrics_port=0)) as server,
        Client(server.address) as client,
    ):
        with client.create_session(model_name) as session:
            session.step(text="a")
            session.generate_text("b", max_tokens=3)
        assert server.running is not None
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    families: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            families.setdefault(sample.name, set()).update(labels | {"instance"})
    yield families  # Prometheus adds "instance" (and "job") to every scraped series


def test_every_query_names_exported_metrics_and_labels(exported: dict[str, set[str]]) -> None:
    for expr in expressions():
        names = METRIC.findall(expr)
        assert names, expr
        for name in names:
            assert name in exported, f"{name} (in {expr}) is not exported"
        labels = set.union(*(exported[n] for n in names))
        for group in GROUPING.findall(expr):
            used = {label.strip() for label in group.split(",")} - {"le"}
            assert used <= labels, f"{expr} groups by {used - labels}, which no series has"
        assert set(SELECTOR_LABELS.findall(expr)) <= labels, expr


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):  # CI installs it (make system-deps)
            raise AssertionError("promtool is missing: make system-deps")
        pytest.skip("promtool (Debian's prometheus) is not installed: make system-deps")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{n}", "expr": expr
                     .replace("$__rate_interval", "1m")
                     .replace('"$instance"', '".*"')
                     .replace('"$model"', '".*"')}
                    for n, expr in enumerate(expressions())
                ],
            }
        ]
    }  # fmt: skip
    path = tmp_path / "rules.json"  # YAML is a superset of JSON
    path.write_text(json.dumps(rules))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
