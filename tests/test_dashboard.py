"""docs/grafana/rnnserve-dashboard.json: a well-formed dashboard whose every query names
metrics and labels a real server exports (and, where promtool is installed, valid PromQL)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import exported_metrics

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
def exported(models_dir: Path, model_name: str) -> dict[str, set[str]]:
    """Every sample name a real server exports: name -> its labels (and "instance",
    which Prometheus adds to every series it scrapes)."""
    families: dict[str, set[str]] = {}
    for family in exported_metrics(models_dir, model_name):
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            families.setdefault(sample.name, set()).update(labels | {"instance"})
    return families


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
