"""The report folder: REPORT.md (each claim → what was measured → the figure → the deviation), ``figures/*.png``,
every number in ``results.json``, the commands and versions, and HTML exports of the executed chapters.

Only the files listed in :data:`WRITES` (and the figures and chapter pages the run makes) are written; nothing is
deleted. A folder that holds another run's report is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import accelerate
import diffusers
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import torch
import transformers
from nbconvert import HTMLExporter

from ..files import atomic_write, write_json
from .registry import Outcome

ROOT = Path(__file__).resolve().parents[2]
WRITES = ("REPORT.md", "results.json")


class ReportExists(FileExistsError):
    """The output folder holds another run's report."""


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file as ``--out``, or a folder holding a report, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise ReportExists(f"--out {out}: is a file, not a folder; choose a folder")
    held = [n for n in WRITES if (out / n).exists()]
    if held and not overwrite:
        raise ReportExists(
            f"--out {out}: holds another run's report ({', '.join(held)}); pass --overwrite to replace the files a "
            "report writes (nothing else is touched), or choose another folder"
        )


def git_commit() -> str:
    """The repository's commit (with '+changes' when the work tree differs from it), or 'unknown'."""
    try:
        run = dict(cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions of everything the numbers depend on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
        "git_commit": git_commit(),
    }


def plain(obj: Any) -> Any:
    """JSON-ready: NaN → null, numpy → Python, tuples → lists, keys → strings."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, (np.integer, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def save_figures(out: Path, outcomes: dict[str, Outcome]) -> list[str]:
    """Every figure as ``figures/<stem>.png``; matplotlib figures are closed after."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    names = []
    for o in outcomes.values():
        for stem, fig in o.figures.items():
            path = out / "figures" / f"{stem}.png"
            if hasattr(fig, "savefig"):
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
            else:
                fig.save(path)
            names.append(path.name)
    return names


def export_chapters(out: Path) -> list[str]:
    """The chapters as stored (already executed by ``make notebooks``), as HTML; nothing is re-executed."""
    books = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if books:
        (out / "chapters").mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    for nb in books:
        html, _ = exporter.from_notebook_node(nbformat.read(nb, as_version=4))
        atomic_write(out / "chapters" / f"{nb.stem}.html", lambda p, h=html: p.write_text(h, encoding="utf-8"))
    return [f"{nb.stem}.html" for nb in books]


def results(meta: dict, outcomes: dict[str, Outcome], skipped: dict[str, str]) -> dict:
    """Everything measured, as one JSON-ready dict."""
    sections = {
        name: {
            "numbers": o.numbers,
            "timings": o.timings,
            "settings": o.settings,
            "skipped_metrics": [{"metric": m, "why": w} for m, w in o.skipped],
            "claims": [asdict(c) for c in o.claims],
        }
        for name, o in outcomes.items()
    }
    return plain({"run": meta, "environment": environment(), "sections": sections, "skipped_sections": skipped})


def markdown(res: dict, titles: dict[str, str], chapters: list[str]) -> str:
    """REPORT.md from the results."""
    run, env = res["run"], res["environment"]
    lines = [
        f"# Reproduction report: `{run['model']}`{' (quick)' if run['quick'] else ''}",
        "",
        f"Made by `{run['command']}` on {run['processes']} process(es) in {run['seconds']:.0f} s. Every number "
        "is in `results.json` (`numbers`: the same on any number of processes; `timings`: this machine); "
        "figures in `figures/`, the chapters as executed in `chapters/`.",
        "",
        "| paper | claim | measured here | figure | deviation from the paper, and why |",
        "|---|---|---|---|---|",
    ]
    for sec in res["sections"].values():
        for c in sec["claims"]:
            fig = f"[{c['figure']}](figures/{c['figure']})" if c["figure"] else "—"
            lines.append(f"| {c['paper']} | {c['claim']} | {c['measured']} | {fig} | {c['deviation']} |")
    for name, sec in res["sections"].items():
        lines += ["", f"## {titles.get(name, name)} (`{name}`)", ""]
        for c in sec["claims"]:
            lines += [f"**{c['claim']}** ({c['paper']})", "", f"- measured: {c['measured']}"]
            lines += [f"- deviation: {c['deviation']}", ""]
            if c["figure"]:
                lines += [f"![{c['figure']}](figures/{c['figure']})", ""]
        for s in sec["skipped_metrics"]:
            lines.append(f"- skipped: {s['metric']} — {s['why']}")
        lines.append(f"- settings: `{json.dumps(sec['settings'], default=str)}`")
    if res["skipped_sections"]:
        lines += ["", "## Sections not run", ""]
        lines += [f"- `{n}`: {why}" for n, why in res["skipped_sections"].items()]
    lines += ["", "## Commands and versions", "", "```", run["command"], "```", ""]
    lines += [f"- {k}: `{v}`" for k, v in env.items()]
    if chapters:
        lines += ["", "## Chapters (as executed, exported to HTML)", ""]
        lines += [f"- [{c}](chapters/{c})" for c in chapters]
    return "\n".join(lines) + "\n"


def write_report(out: Path, meta: dict, outcomes: dict[str, Outcome], skipped: dict[str, str], titles, chapters=True):
    """Write the folder; returns the results dict written to ``results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    save_figures(out, outcomes)
    pages = export_chapters(out) if chapters else []
    res = results(meta, outcomes, skipped)
    write_json(out / "results.json", res)
    atomic_write(out / "REPORT.md", lambda p: p.write_text(markdown(res, titles, pages), encoding="utf-8"))
    return res


def command_line() -> str:
    """The command as typed, for the report (``python -m reprolib.reproduce ...``)."""
    return " ".join(["python -m reprolib.reproduce", *sys.argv[1:]])
