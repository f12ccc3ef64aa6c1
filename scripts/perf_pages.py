"""Render a benchmark JSON under docs/perf/ as a markdown table with where it came from.

The docs build (docs/hooks/generate.py) replaces every ``<!-- perf-table: FILE [key=value …] -->``
line of a page under docs/perf/ with ``render(FILE, filters)``: the machine, command and date the
numbers came from, then one row per record. Provenance is read from the JSON's own ``machine`` /
``date`` / ``command`` fields, else from ``docs/perf/sources.yaml`` (one entry per file).

    python scripts/perf_pages.py docs/perf/estimators-cpu.json [shape=mnist]   # print the markdown
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path
from typing import Any

import yaml

PERF = Path(__file__).resolve().parent.parent / "docs" / "perf"
PROVENANCE = ("date", "machine", "command", "note")

# Column headings for the fields the benches write; other fields keep their own names.
HEADINGS = {
    "num_samples": "K",
    "batch": "B",
    "step_s": "step ms",
    "x_ts": "× two-step",
    "x_legacy": "× legacy two-step",
    "peak_mb": "peak MB",
    "cg_matvecs": "CG matvecs",
    "precond_matvecs": "precond. matvecs",
    "matvecs": "matvecs",
    "grad_err_ours": "grad err",
    "grad_err_ref": "grad err (reference)",
    "grad_err_ours_solve": "solve err",
    "grad_err_ref_solve": "solve err (reference)",
    "grad_err_converged": "grad err (converged)",
    "precond_build_s": "precond. build ms",
    "rows_per_s": "rows/s",
    "ratio_vs_pyarrow": "× pyarrow",
    "peak_rss_mb": "peak RSS MB",
}
MILLISECONDS = {"step_s", "precond_build_s"}


def load(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of a bench JSON and its provenance (the file's fields, else sources.yaml)."""
    data = json.loads(path.read_text())
    records = data["records"] if isinstance(data, dict) else data
    sources_file = path.parent / "sources.yaml"
    sources = yaml.safe_load(sources_file.read_text()) if sources_file.exists() else {}
    meta = dict((sources or {}).get(path.name, {}))
    if isinstance(data, dict):
        meta.update({k: v for k, v in data.items() if k != "records"})
    return records, meta


def cell(key: str, value: Any) -> str:
    """One table cell: milliseconds for ``*_s`` step times, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if key in MILLISECONDS:
            return f"{value * 1000:.1f}"
        return f"{value:,.0f}" if abs(value) >= 1_000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value).replace("|", "\\|")


def render(name: str, filters: dict[str, str] | None = None, perf_dir: Path = PERF) -> str:
    """Markdown for ``perf_dir/name``: provenance, the fields shared by every row, then the table.

    ``filters`` keep the records whose field matches a shell pattern (``shape=d-sweep-*``).
    """
    records, meta = load(perf_dir / name)
    records = [
        r for r in records if all(fnmatch.fnmatchcase(str(r.get(k)), v) for k, v in (filters or {}).items())
    ]
    if not records:
        raise ValueError(f"{name}: no record matches {filters}")
    keys: list[str] = []
    for record in records:
        keys += [k for k in record if k not in keys]
    shared = {k: records[0].get(k) for k in keys if len({json.dumps(r.get(k)) for r in records}) == 1}
    columns = [k for k in keys if k not in shared] or keys
    lines = [f"**Source**: [`{name}`]({name})", ""]
    lines += [
        f"- **{k}**: `{meta[k]}`" if k == "command" else f"- **{k}**: {meta[k]}"
        for k in PROVENANCE
        if meta.get(k)
    ]
    extra = {k: v for k, v in meta.items() if k not in PROVENANCE}
    lines += [f"- **{k}**: {cell(k, v)}" for k, v in extra.items()]
    if shared and len(columns) < len(keys):
        lines.append("- **every row**: " + ", ".join(f"{k} = {cell(k, v)}" for k, v in shared.items()))
    lines += ["", "| " + " | ".join(HEADINGS.get(k, k) for k in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def parse_marker(line: str) -> tuple[str, dict[str, str]] | None:
    """``<!-- perf-table: FILE k=v … -->`` → (FILE, {k: v}); None for any other line."""
    text = line.strip()
    if not (text.startswith("<!-- perf-table:") and text.endswith("-->")):
        return None
    name, *pairs = text[len("<!-- perf-table:") : -len("-->")].split()
    return name, dict(pair.split("=", 1) for pair in pairs)


def expand(markdown: str, perf_dir: Path = PERF) -> str:
    """Replace every perf-table marker line of a page with its rendered table."""
    out = []
    for line in markdown.splitlines():
        marker = parse_marker(line)
        out.append(render(marker[0], marker[1], perf_dir) if marker else line)
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    """Print the table of one JSON (``path [key=value …]``)."""
    if not argv:
        print(__doc__)
        return 2
    path = Path(argv[0])
    print(render(path.name, dict(a.split("=", 1) for a in argv[1:]), path.resolve().parent))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
