"""Render the Grafana dashboard ``docs/grafana/rnnserve-dashboard.json`` from a real run.

    python -m bench.dashboard [--duration 150] [--out docs/grafana/dashboard.png]

Starts rnnserve-server with two models (copies of the benchmark package, so their labels
differ) and its metrics port, and a real Prometheus (Debian's ``prometheus``: ``apt-get
install prometheus``) that scrapes it every second; drives it with the benchmark's load
client for ``--duration`` seconds in overlapping phases (generation on one model,
lockstep steps and session churn on the other, a trickle of failing calls); then asks
Prometheus for every panel's queries over the run (``query_range``, the dashboard's
variables at "All", ``$__rate_interval`` as 15 s) and draws each panel where the
dashboard places it. What the picture shows is what Grafana would show for that run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter

from bench.cluster import free_port
from bench.machine import machine_info
from bench.package import ensure_package
from bench.procs import REPO_ROOT, python_module, run_worker, serving

DASHBOARD = REPO_ROOT / "docs" / "grafana" / "rnnserve-dashboard.json"
MODELS = ("lm", "typeahead")
RATE_INTERVAL = "15s"
STEP_S = 2
# Grafana's dark theme and its classic palette.
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
PALETTE = ("#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff")


# ---------------------------------------------------------------- the run


def repository(root: Path) -> Path:
    """Two models, each a copy of the benchmark package under its own name."""
    package = ensure_package()
    for name in MODELS:
        target = root / name / "1"
        shutil.copytree(package, target)
        manifest_path = target / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["name"] = name
        manifest_path.write_text(json.dumps(manifest))
    return root


@contextlib.contextmanager
def prometheus(folder: Path, target_port: int) -> Iterator[str]:
    """A Prometheus scraping 127.0.0.1:target_port every second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("bench.dashboard needs prometheus: apt-get install prometheus")
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: rnnserve\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _ready(f"{url}/-/ready"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("prometheus did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def drive(address: str, duration_s: float) -> None:
    """The load, in overlapping phases, each a load client of its own (in parallel)."""
    third = duration_s / 3
    phases = [  # (start, model, mode and options, length)
        (0.0, MODELS[0], ["--mode", "generate", "--concurrency", "4", "--max-tokens", "48"],
         2 * third),
        (third, MODELS[1], ["--mode", "lockstep", "--concurrency", "8"], 2 * third),
        (1.5 * third, MODELS[1], ["--mode", "churn", "--count", "100000"], third),
    ]  # fmt: skip

    def phase(start: float, model: str, options: list[str], length: float) -> None:
        time.sleep(start)
        run_worker(
            "bench.load_client",
            ["--address", address, "--model", model, *options, "--warmup", "0",
             "--duration", f"{length:.0f}"],
            timeout_s=length + 120,
        )  # fmt: skip

    threads = [threading.Thread(target=phase, args=p, daemon=True) for p in phases]
    threads.append(threading.Thread(target=failures, args=(address, duration_s), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + 180)


def failures(address: str, duration_s: float) -> None:
    """A few failing calls a second: unknown sessions (4/s), a rejected sampling value (1/s)."""
    from rnnserve import Client, RnnServeError

    deadline = time.monotonic() + duration_s
    with Client(address, retries=0) as client:
        for turn in range(10**9):
            if time.monotonic() > deadline:
                break
            with contextlib.suppress(RnnServeError):
                client.step("0" * 32, text="a")
            if turn % 4 == 0:
                with (
                    contextlib.suppress(RnnServeError),
                    client.create_session(MODELS[0]) as session,
                ):
                    session.generate_text("a", top_k=10**6)
            time.sleep(0.25)


# ---------------------------------------------------------------- the queries


def query_range(url: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    concrete = (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace('=~"$instance"', '=~".*"')
        .replace('=~"$model"', '=~".*"')
    )
    query = urllib.parse.urlencode({"query": concrete, "start": start, "end": end, "step": STEP_S})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{query}", timeout=30) as reply:
        answer = json.loads(reply.read())
    if answer["status"] != "success":
        raise RuntimeError(f"{concrete}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


# ---------------------------------------------------------------- the picture


def _si(value: float, unit: str) -> str:
    if unit == "s":
        for scale, name in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale or scale == 1e-6:
                return f"{value / scale:.3g} {name}"
    if unit == "bytes":
        return f"{value / 2**20:.0f} MiB"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "reqps":
        return f"{value:.3g}/s"
    return f"{value:.3g}"


def _minutes(seconds: float, _position: int) -> str:
    return f"{seconds // 60:.0f}:{seconds % 60:02.0f}"


Series = dict[int, list[tuple[str, list[tuple[float, float]]]]]  # by panel id: (legend, points)


def render(dashboard: dict[str, Any], series: Series, start: float, out: Path, footer: str) -> None:
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(20, height * 0.37), facecolor=BACKGROUND)
    unit_row = 1 / (height + 1.5)
    figure.text(0.01, 1 - 0.6 * unit_row, f"{dashboard['title']}", color=TEXT, fontsize=15,
                fontweight="bold", va="center")  # fmt: skip
    for panel in panels:
        grid = panel["gridPos"]
        top = 1 - (grid["y"] + 1.2) * unit_row
        if panel["type"] == "row":
            figure.text(0.01, top - 0.5 * unit_row, panel["title"], color=TEXT, fontsize=12,
                        fontweight="bold", va="center")  # fmt: skip
            continue
        left, width = grid["x"] / 24 + 0.004, grid["w"] / 24 - 0.008
        axes = figure.add_axes(
            (left + 0.028, top - (grid["h"] - 0.9) * unit_row, width - 0.034,
             (grid["h"] - 2.4) * unit_row)
        )  # fmt: skip
        figure.patches.append(
            Rectangle((left, top - grid["h"] * unit_row + 0.1 * unit_row), width,
                          (grid["h"] - 0.2) * unit_row, transform=figure.transFigure,
                          facecolor=PANEL, edgecolor=GRID, zorder=-1)
        )  # fmt: skip
        figure.text(left + 0.006, top - 0.45 * unit_row, panel["title"], color=TEXT,
                    fontsize=10, va="center")  # fmt: skip
        unit = panel["fieldConfig"]["defaults"]["unit"]
        axes.set_facecolor(PANEL)
        for n, (name, points) in enumerate(series.get(panel["id"], [])):
            xs = [t - start for t, _ in points]
            ys = [v for _, v in points]
            axes.plot(xs, ys, color=PALETTE[n % len(PALETTE)], linewidth=1.2, label=name)
            axes.fill_between(xs, ys, color=PALETTE[n % len(PALETTE)], alpha=0.08)
        axes.set_ylim(bottom=0)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, u=unit: _si(v, u)))
        axes.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _pos: f"{v // 60:.0f}:{v % 60:02.0f}")
        )
        axes.tick_params(colors=TEXT, labelsize=7)
        axes.grid(color=GRID, linewidth=0.5)
        for spine in axes.spines.values():
            spine.set_visible(False)
        if axes.lines:
            axes.legend(loc="upper left", fontsize=7, frameon=False, labelcolor=TEXT,
                        ncol=2 if len(axes.lines) > 3 else 1)  # fmt: skip
    figure.text(0.01, 0.004, footer, color="#8e8e8e", fontsize=7.5, va="bottom")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90, facecolor=BACKGROUND)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=150, help="seconds of load")
    parser.add_argument("--out", type=Path, default=DASHBOARD.with_name("dashboard.png"))
    args = parser.parse_args()
    dashboard = json.loads(DASHBOARD.read_text())
    with tempfile.TemporaryDirectory(prefix="rnnserve-dashboard-") as folder:
        root = Path(folder)
        models = repository(root / "models")
        metrics_port = free_port()
        command = python_module(
            "rnnserve_server", "--models", str(models), "--port", "0",
            "--metrics-port", str(metrics_port),
        )  # fmt: skip
        with serving("rnnserve", command) as server, prometheus(root, metrics_port) as url:
            time.sleep(3)
            start = time.time()
            drive(server.address, args.duration)
            end = time.time()
            time.sleep(3)  # the last scrape
            series: Series = {}
            for panel in dashboard["panels"]:
                for target in panel.get("targets", []):
                    for result in query_range(url, target["expr"], start, end):
                        points = [
                            (float(t), float(v))
                            for t, v in result["values"]
                            if math.isfinite(float(v))
                        ]
                        name = legend(target.get("legendFormat", ""), result["metric"])
                        series.setdefault(panel["id"], []).append((name, points))
            version = subprocess.run(
                ["prometheus", "--version"], capture_output=True, text=True, check=False
            ).stdout.split("\n")[0]
    machine = machine_info()
    footer = (
        f"Rendered by bench/dashboard.py from a real run on "
        f"{datetime.date.today().isoformat()}: {args.duration:.0f} s of load on "
        f"{machine['nproc']} cores ({machine['cpu_model']}), client and server sharing them; "
        f"queries evaluated by {version}. Model versions: copies of the benchmark GRU."
    )
    render(dashboard, series, start, args.out, footer)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
