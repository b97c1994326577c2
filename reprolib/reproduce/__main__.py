"""``python -m reprolib.reproduce``: both papers' experiments on one model, written up as a report folder.

python -m reprolib.reproduce --model shapes --out report/                 # every section, full size
python -m reprolib.reproduce --model shapes --out report/ --quick         # a smoke run: a few seeds
python -m reprolib.reproduce --model sd15 --out report/ --sections layout deltas
accelerate launch --num_processes 4 -m reprolib.reproduce --model sdxl --out report/     # 4 GPUs share the seeds
python -m reprolib.reproduce --update-readme reports/shapes/results.json  # README tables from a run's numbers
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..pipelines import ModelNotAvailable, load_pipeline
from .distribute import Workers
from .readme import README, check_readme, update_readme
from .registry import Context, UnknownSection
from .report import ReportExists, check_out, command_line, write_report
from .sections import default_sections


def parser(names: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reprolib.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="shapes", help="shapes, sd15, sd21, sdxl, a hub id or folder; tiny-sd15 ...")
    p.add_argument("--out", type=Path, help="report folder (REPORT.md, results.json, figures/, chapters/)")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few seeds and short runs")
    p.add_argument("--sections", nargs="+", metavar="NAME", help=f"only these, of: {' '.join(names)}")
    p.add_argument("--overwrite", action="store_true", help="replace another run's report files in --out")
    p.add_argument("--no-chapters", action="store_true", help="do not export the chapters to HTML")
    p.add_argument(
        "--steps", type=int, help="sampling steps everywhere (default: the model's own; fewer for a smoke run)"
    )
    p.add_argument("--device"), p.add_argument("--dtype", help="fp32, fp16 or bf16 (default: by device)")
    p.add_argument("--update-readme", type=Path, metavar="RESULTS_JSON", help="write README's tables from a run")
    p.add_argument("--check-readme", type=Path, metavar="RESULTS_JSON", help="exit 1 if README's tables differ")
    return p


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    registry = default_sections()
    a = parser(registry.names).parse_args(argv)
    if a.update_readme or a.check_readme:
        if a.update_readme:
            print(f"updated {update_readme(README, a.update_readme)}")
            return 0
        stale = check_readme(README, a.check_readme)
        print("README agrees with " + str(a.check_readme) if not stale else f"README differs in: {', '.join(stale)}")
        return 1 if stale else 0
    if a.steps is not None and a.steps < 1:
        return fail(f"--steps {a.steps}: give a positive number of sampling steps")
    if a.out is None:
        return fail("--out: give the report folder, e.g. --out report/")
    try:
        sections = registry.select(a.sections)
        check_out(a.out, a.overwrite)
    except (UnknownSection, ReportExists) as e:
        return fail(str(e))
    workers = Workers()
    try:
        pipe = load_pipeline(a.model, device=a.device or (workers.device if workers.count > 1 else None), dtype=a.dtype)
    except (ModelNotAvailable, OSError, ValueError) as e:
        return fail(f"--model {a.model}: cannot be loaded: {' '.join(str(e).split())}")
    pipe.set_progress_bar_config(disable=True)
    if a.steps:  # every section samples with generate's defaults, which read this
        pipe.reprolib_defaults = {**(getattr(pipe, "reprolib_defaults", None) or {}), "steps": a.steps}
    ctx = Context(pipe, a.model, a.quick, workers)
    t0 = time.perf_counter()
    outcomes, skipped = {}, {}
    for s in sections:
        reason = s.skip(a.model)
        if reason:
            skipped[s.name] = reason
            continue
        if workers.is_main:
            print(f"[{s.name}] {s.title}", flush=True)
        start = time.perf_counter()
        outcomes[s.name] = s.run(ctx)
        outcomes[s.name].timings["section_seconds"] = took = time.perf_counter() - start
        if workers.is_main:
            print(f"[{s.name}] done in {took:.0f} s", flush=True)
    if workers.is_main:
        meta = {
            "model": a.model,
            "quick": a.quick,
            "sections": [s.name for s in sections],
            "processes": workers.count,
            "command": command_line(),
            "seconds": time.perf_counter() - t0,
        }
        titles = {s.name: s.title for s in sections}
        write_report(a.out, meta, outcomes, skipped, titles, chapters=not a.no_chapters)
        print(f"wrote {a.out / 'REPORT.md'} ({meta['seconds']:.0f} s)")
    workers.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
