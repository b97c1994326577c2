"""README's measured tables, written from a report's ``results.json`` between markers, and checked against it.

    <!-- reproduce:layout -->
    (generated: do not edit by hand)
    <!-- /reproduce:layout -->

``update_readme`` rewrites every marked block it has a table for; ``check_readme`` names the blocks that differ
(a test runs it on the committed ``reports/shapes/results.json``). Text outside the markers is never touched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ..files import atomic_write

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"(<!-- reproduce:(\w+) -->\n)(.*?)(<!-- /reproduce:\2 -->)", re.S)


def f2(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def short(layer: str) -> str:
    """``up_blocks.1.attentions.0.transformer_blocks.0.attn2 (8x8)`` → ``up_blocks.1.attentions.0 (8x8)``."""
    return layer.replace(".transformer_blocks.0.attn2", "")


def card_table(sec: dict) -> str:
    f, bars = sec["numbers"]["faithfulness"], sec["numbers"]["bars"]
    keys = ("colour", "shape", "count", "size")
    return "\n".join(
        [
            f"| on {f['captions']} fresh captions | colour present | shape right | object count right "
            "| small/big obeyed |",
            "|---|---|---|---|---|",
            "| measured | " + " | ".join(f"{f[k]:.3f}" for k in keys) + " |",
            "| bar | " + " | ".join(f"≥ {bars[k]:.2f}" for k in keys) + " |",
            "",
            f"A noun's attention on its own object ÷ the object's share of the image ({sec['numbers']['scenes']} "
            "scenes, mean over steps): "
            + ", ".join(f"{v:.1f}× in `{short(k)}`" for k, v in sec["numbers"]["localisation"].items())
            + ".",
        ]
    )


def deltas_table(sec: dict) -> str:
    n = sec["numbers"]
    rows = [
        f"| size delta ({n['seeds']} seeds, α ∈ [{n['alphas'][0]:g}, {n['alphas'][-1]:g}]) | ρ circle | ρ square | "
        "ρ triangle | ρ circle in pair | leak to the square |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("optimization-free", "learned"):
        if name in n:
            d = n[name]
            per = d["rho_per_subject"]
            rows.append(
                f"| {name} | {f2(per['circle'])} | {f2(per['square'])} | {f2(per['triangle'])} | "
                f"{f2(d['rho_pair'])} | {f2(d['leak_pair'])} |"
            )
    sp = n["specificity"]
    rows += [
        "",
        f"Every subject/bystander shape pair at α = {sp['alpha']:g} ({sp['seeds']} seeds): worst leak "
        f"{f2(sp['worst_leak'])}; size + colour stacked on the subject keep the bystander in at worst "
        f"{f2(sp['worst_kept'])} of the images. Text space (`{n['text_space']['config']}`): each pair's delta against "
        f"the other pairs', mean cosine {f2(n['text_space']['mean'])}.",
    ]
    return "\n".join(rows)


def learning_table(sec: dict) -> str:
    n, t, s = sec["numbers"], sec["timings"], sec["settings"]
    p = n["projected"]
    rows = [
        f"| scheme ({s['steps']} steps × {s['grad_accum_steps']} micro-steps) | UNet rows / micro-step | calls / "
        f"micro-step | held-out loss | s / micro-step | rows / micro-step, full {s['project']}-step run |",
        "|---|---|---|---|---|---|",
    ]
    for k in ("original", "cached"):
        rows.append(
            f"| {k} | {n[k]['rows']:.1f} | {n[k]['calls']:.1f} | {n[k]['heldout']:.4g} | "
            f"{t[k]['wall_micro']:.3f} | {p[k]['rows']:.2f} |"
        )
    rows += [
        "",
        f"Cached ÷ original: {n['rows_ratio']:.2f}× fewer UNet rows ({t['wall_ratio']:.2f}× less wall time) in this "
        f"run, {n['projected_rows_ratio']:.2f}× fewer rows and {n['projected_calls_ratio']:.2f}× fewer calls over a "
        f"full run; held-out loss cached ÷ original {n['heldout_ratio']:.3f}.",
    ]
    return "\n".join(rows)


def layout_table(sec: dict) -> str:
    n, t = sec["numbers"], sec["timings"]
    rows = ["| method | in box | object found | s/image | × unguided |", "|---|---|---|---|---|"]
    for m, v in n["methods"].items():
        tm = t["methods"][m]
        rows.append(f"| {m} | {f2(v['in_box'])} | {f2(v['found'])} | {f2(tm['seconds'])} | {f2(tm['ratio'])} |")
    ae = t.get("attend_and_excite")
    if ae:
        rows += [
            "",
            f"diffusers' Attend-and-Excite on the same model: {ae['ratio']:.2f}× a plain image ({ae['seeds']} seeds, "
            "measured in the same run).",
        ]
    return "\n".join(rows)


TABLES: dict[str, Callable[[dict], str]] = {
    "card": card_table,
    "deltas": deltas_table,
    "learning": learning_table,
    "layout": layout_table,
}


def rendered(results: dict) -> dict[str, str]:
    """``{block name: markdown}`` for every section of ``results`` with a table."""
    return {k: TABLES[k](sec) for k, sec in results["sections"].items() if k in TABLES}


def blocks(text: str) -> dict[str, str]:
    """The marked blocks of a README: ``{name: content}``."""
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def fill(text: str, tables: dict[str, str]) -> str:
    """``text`` with each marked block that has a table replaced by it."""
    return BLOCK.sub(
        lambda m: m.group(1) + (tables[m.group(2)] + "\n" if m.group(2) in tables else m.group(3)) + m.group(4), text
    )


def update_readme(readme: Path, results_json: Path) -> Path:
    tables = rendered(json.loads(Path(results_json).read_text()))
    text = readme.read_text(encoding="utf-8")
    atomic_write(readme, lambda p: p.write_text(fill(text, tables), encoding="utf-8"))
    return readme


def check_readme(readme: Path, results_json: Path) -> list[str]:
    """Names of README blocks that differ from what ``results_json`` gives (or that it has no numbers for)."""
    tables = rendered(json.loads(Path(results_json).read_text()))
    return [k for k, v in blocks(readme.read_text(encoding="utf-8")).items() if tables.get(k, "").strip() != v.strip()]
