"""scripts/ui_check.py fails a chart page that shows only loading spinners (its text alone would pass).

The DOMs below are what Chromium's ``--dump-dom`` gives, cut down: the section title and metric
name are in the page while the charts load, so only the drawn SVG tells a chart from a spinner.
The browser run itself needs Chromium (``scripts/install_chromium.sh``) and is not part of the suite.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ui_check.py"
spec = importlib.util.spec_from_file_location("ui_check", SCRIPT)
ui_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ui_check)

CHECKS = [("system metric charts", r"System metrics \([1-9]"), ("CPU chart", "cpu_utilization_percentage")]
TITLE = "<h2>System metrics (4)</h2><div><span>system/cpu_utilization_percentage</span>"
SPINNERS = f'<body>{TITLE}<div class="du-bois-light-spin" aria-label="Loading chart" role="status"></div></div></body>'
DRAWN = (
    f'<body>{TITLE}<div class="js-plotly-plot"><svg class="main-svg" width="400"></svg></div></div></body>'
)
NO_METRICS = "<body><h2>System metrics</h2><p>No system metrics recorded</p></body>"


def test_a_page_of_spinners_fails_though_its_text_passes() -> None:
    problems = ui_check._problems(SPINNERS, CHECKS, "system-metrics", drawn=True)
    assert any("no chart drawn" in p for p in problems) and any("still loading" in p for p in problems)
    assert ui_check._problems(SPINNERS, CHECKS, "system-metrics", drawn=False) == []  # the old check


def test_a_drawn_chart_passes() -> None:
    assert ui_check._problems(DRAWN, CHECKS, "system-metrics", drawn=True) == []


def test_a_run_without_system_metrics_fails() -> None:
    problems = ui_check._problems(NO_METRICS, CHECKS, "system-metrics", drawn=True)
    assert len(problems) == 3, problems  # no count, no CPU chart, nothing drawn


def test_the_metric_page_needs_its_chart_drawn_beside_its_polling_spinner() -> None:
    """The metric page keeps a spinner beside its drawn chart (it polls for points): there the
    drawn SVG is the check, and a page of only the spinner still fails."""
    checks = [("metric chart", r"prof \(val/nll\)")]
    spinner = '<div class="du-bois-light-spin du-bois-light-spin-spinning"></div>'
    drawn = f'<body>{spinner}<svg class="main-svg"></svg><span>prof (val/nll)</span></body>'
    loading = f"<body>{spinner}<span>prof (val/nll)</span></body>"
    assert ui_check._problems(drawn, checks, "metric", drawn=True, spinner_free=False) == []
    assert ui_check._problems(drawn, checks, "metric", drawn=True) != []  # the system-metrics rule
    assert any(
        "no chart drawn" in p
        for p in ui_check._problems(loading, checks, "metric", drawn=True, spinner_free=False)
    )
