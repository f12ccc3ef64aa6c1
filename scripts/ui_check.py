"""Screenshot a training run in the MLflow UI with headless Chromium and check what the pages show.

    bash scripts/install_chromium.sh                       # once (Debian/Ubuntu, root or sudo)
    python scripts/ui_check.py --tracking-uri sqlite:///$PWD/mlflow.db --out docs/img

Starts ``mlflow server`` on 127.0.0.1 (a free port) against the tracking database, then renders
with Chromium (``--headless=new --virtual-time-budget``) and reads the rendered DOM (``--dump-dom``):

- the run page (overview): the dataset input (its name and digest) is listed;
- the run's *System metrics* tab: a ``cpu_utilization_percentage`` chart, drawn (its SVG in the
  DOM, no loading spinner left): section titles appear while the charts still load, so text
  alone passes on a page of spinners;
- the registered model version page: the signature (``Inputs (N)``/``Outputs (N)``, N ≥ 1);
- the metric chart page for ``--metric`` (default ``val/nll``), drawn as well.

A page still loading is rendered again with twice the time budget (up to ``--retries`` times)
before its checks count as failed.

Writes ``run.png``, ``system-metrics.png``, ``model-version.png`` and ``metric.png`` (plus the
DOM text of each page, ``*.txt``) to ``--out``. Exits 1 naming every page check that failed,
2 for bad usage (no such run, no Chromium). The run defaults to the newest finished run that
registered a model version; ``--run-id`` picks one.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chromium(given: str | None) -> str:
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name) if name else None
        if path:
            return path
    raise LookupError("Chromium not found; run `bash scripts/install_chromium.sh` or pass --chromium PATH")


def _pick(client, run_id: str | None):
    """(run, model version or None): ``run_id``'s, else the newest finished run with a registered version."""
    if run_id:
        run = client.get_run(run_id)
        versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
        return run, max(versions, key=lambda v: int(v.version)) if versions else None
    for version in sorted(client.search_model_versions(), key=lambda v: -v.creation_timestamp):
        if version.run_id:
            run = client.get_run(version.run_id)
            if run.info.status == "FINISHED":
                return run, version
    raise LookupError("no finished run with a registered model version in this tracking database")


def _text(dom: str) -> str:
    """Visible-ish text of a dumped DOM (scripts and styles dropped, tags removed, entities decoded)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


# A drawn chart: plotly's SVG root (MLflow's run and metric charts are plotly). A page still
# loading: the design system's spinner (aria-label "Loading…", aria-busy, a *spin* class).
CHART_DRAWN = re.compile(r'class="[^"]*\bmain-svg\b')
# MLflow draws a chart only once it is inside the window: in a 1000-pixel window the DOM of the
# system-metrics page (8 charts, three rows) held 0 plotly SVGs and a spinner per chart, while a
# window that holds every chart held 24 SVGs and no spinner
WINDOW = "1400,2600"
LOADING = re.compile(r'aria-busy="true"|aria-label="[^"]*\bloading|class="[^"]*\bspin(?:ner)?\b', re.I)


def _render(chromium: str, url: str, png: Path, budget_ms: int, profile: str) -> str:
    """Screenshot ``url`` to ``png`` and return the rendered page's DOM (two Chromium runs)."""
    common = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
              f"--window-size={WINDOW}", f"--virtual-time-budget={budget_ms}"]  # fmt: skip
    timeout = 60 + budget_ms / 1000 * 4
    try:
        subprocess.run(
            [*common, f"--screenshot={png}", url], capture_output=True, timeout=timeout, check=False
        )
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # a loaded machine: the page's checks fail, naming it
        print(f"warning: Chromium did not finish {url} within {timeout:.0f} s", file=sys.stderr)
        return ""
    return dom.stdout


def _problems(
    dom: str, checks: list[tuple[str, str]], page: str, drawn: bool, spinner_free: bool = True
) -> list[str]:
    """What ``page``'s DOM fails of ``checks`` (regular expressions on its text) and, when ``drawn``,
    of a drawn chart and (``spinner_free``) of no spinner left."""
    text = _text(dom)
    problems = [
        f"{page} page: {what} ({pattern!r}) not shown"
        for what, pattern in checks
        if not re.search(pattern, text)
    ]
    if drawn and not CHART_DRAWN.search(dom):
        problems.append(f"{page} page: no chart drawn (no plotly SVG in the page)")
    if drawn and spinner_free and LOADING.search(dom):
        problems.append(f"{page} page: still loading (a spinner is left on the page)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="sqlite:////abs/mlflow.db (the training run's)")
    parser.add_argument("--run-id", help="default: newest finished run with a registered model version")
    parser.add_argument("--metric", default="val/nll")
    parser.add_argument("--out", default="ui-check", help="folder for the PNGs and page texts")
    parser.add_argument("--chromium", help="browser binary (default: chromium on PATH)")
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium --virtual-time-budget")
    parser.add_argument(
        "--retries", type=int, default=2, help="renders again, with twice the budget, of a page still loading"
    )
    args = parser.parse_args(argv)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    try:
        chromium = _chromium(args.chromium)
        run, version = _pick(client, args.run_id)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except mlflow.exceptions.MlflowException as exc:
        print(f"error: --run-id {args.run_id}: {exc.message.splitlines()[0]}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exp, rid = run.info.experiment_id, run.info.run_id
    datasets = [i.dataset for i in run.inputs.dataset_inputs]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.tracking_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    missing: list[str] = []
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    print(f"error: mlflow server exited with {server.returncode}", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        metric_query = urllib.parse.urlencode(
            {"runs": json.dumps([rid]), "metric": json.dumps(args.metric), "experiments": json.dumps([exp]),
             "plot_metric_keys": json.dumps([args.metric]), "plot_layout": "{}", "x_axis": "step",
             "y_axis_scale": "linear", "line_smoothness": "1", "show_point": "true",
             "deselected_curves": "[]", "last_linear_y_axis_range": "[]"},
            quote_via=urllib.parse.quote,
        )  # fmt: skip
        pages = {
            "run": f"{base}/#/experiments/{exp}/runs/{rid}",
            "system-metrics": f"{base}/#/experiments/{exp}/runs/{rid}/system-metrics",
            "metric": f"{base}/#/metric?{metric_query}",
        }
        if version is not None:
            name = urllib.parse.quote(version.name, safe="")
            pages["model-version"] = f"{base}/#/models/{name}/versions/{version.version}"
        else:
            missing.append("model-version page: the run registered no model version")
        checks = {  # page: (what, regular expression on the rendered text)
            "run": [("dataset input", re.escape(d.name)) for d in datasets]
            + [("dataset digest", re.escape(d.digest)) for d in datasets],
            "system-metrics": [("system metric charts", r"System metrics \([1-9]"),
                               ("CPU utilisation chart", "cpu_utilization_percentage")],
            "model-version": [("signature inputs", r"Inputs \([1-9]"), ("signature outputs", r"Outputs \([1-9]")],
            "metric": [("metric chart", re.escape(f"{run.info.run_name} ({args.metric})"))],
        }  # fmt: skip
        if not datasets:
            missing.append("run page: the run has no dataset input")
        drawn = {"system-metrics", "metric"}  # pages whose charts must be drawn, not loading
        # the metric page keeps a spinner beside its drawn chart (it polls for new points: seen in
        # MLflow 3.17's DOM after 60 s of virtual time), so there a drawn chart is the check
        spinner_free = {"system-metrics"}
        with tempfile.TemporaryDirectory() as profile:
            for page, url in pages.items():
                budget = args.budget_ms
                for _ in range(args.retries + 1):
                    dom = _render(chromium, url, out / f"{page}.png", budget, profile)
                    problems = _problems(dom, checks[page], page, page in drawn, page in spinner_free)
                    if not any("still loading" in p or "no chart drawn" in p for p in problems):
                        break
                    budget *= 2  # the page was still loading: give it more (virtual) time
                (out / f"{page}.txt").write_text(_text(dom))
                if not (out / f"{page}.png").is_file():
                    problems.append(f"{page} page: no screenshot written")
                missing += problems
                print(f"{page}: {url}  -> {out / (page + '.png')}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    if missing:
        for line in missing:
            print(f"missing: {line}", file=sys.stderr)
        return 1
    print(f"ok: run {rid} — dataset, system metrics, signature and the {args.metric} chart are shown")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sys.exit(main())
