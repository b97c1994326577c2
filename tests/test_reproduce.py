"""``python -m reprolib.reproduce``: bad input refused before any work, the report folder, README's tables from a
run's numbers, and two processes under ``accelerate launch`` giving a one-process run's numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reprolib.evaluation.deltas import Sweep
from reprolib.evaluation.specificity import Specificity, specificity
from reprolib.evaluation.stats import leak_ratio
from reprolib.reproduce import Outcome, Registry, default_sections
from reprolib.reproduce.__main__ import main
from reprolib.reproduce.deltas import join
from reprolib.reproduce.readme import README, blocks, check_readme, fill, rendered

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "reports" / "shapes" / "results.json"
# a few seconds on a random tiny SD 1.5: three units of learning (uneven over two processes), two of layout
TINY = ["--model", "tiny-sd15", "--quick", "--steps", "2", "--no-chapters", "--sections", "learning", "layout"]


def test_an_unknown_section_is_refused_in_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--model", "shapes", "--out", str(out), "--sections", "layout", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "layout" in err and "card" in err
    assert not out.exists()


def test_a_model_that_cannot_be_loaded_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["--model", str(tmp_path / "no-such-model"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model" in err and "no-such-model" in err
    assert not out.exists()


def test_another_runs_report_is_refused_and_overwrite_keeps_the_users_files(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.json").write_text("{}")
    (out / "my notes.txt").write_text("mine")
    assert main([*TINY, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "results.json").read_text() == "{}"
    assert main([*TINY, "--out", str(out), "--overwrite"]) == 0
    assert (out / "my notes.txt").read_text() == "mine"
    res = json.loads((out / "results.json").read_text())
    assert res["run"]["model"] == "tiny-sd15" and res["run"]["processes"] == 1
    assert set(res["sections"]) == {"learning", "layout"} and res["environment"]["torch"]
    report = (out / "REPORT.md").read_text()
    assert "| paper | claim | measured here |" in report and "learning_cost.png" in report
    assert (out / "figures" / "learning_cost.png").stat().st_size > 0
    # a model without the ruler says which metrics it skipped and why
    assert any("ruler" in s["why"] for s in res["sections"]["layout"]["skipped_metrics"])


def test_two_processes_under_accelerate_give_the_one_process_numbers(tmp_path):
    """accelerate launch (two CPU processes, one thread each) splits the units; the gathered numbers are equal."""
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists():
        pytest.skip("accelerate's launcher is not installed beside this Python")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*TINY, "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "reprolib.reproduce", *TINY, "--out", str(two)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert b["run"]["processes"] == 2 and a["run"]["processes"] == 1
    for name in ("learning", "layout"):
        assert a["sections"][name]["numbers"] == b["sections"][name]["numbers"], name


def test_sweeps_from_single_seeds_join_as_one_sweep():
    s0 = Sweep([0.0, 1.0, 2.0], [0], np.array([[10.0], [20.0], [30.0]]), np.array([[5.0], [5.0], [6.0]]), [])
    s1 = Sweep([0.0, 1.0, 2.0], [1], np.array([[12.0], [18.0], [40.0]]), np.array([[5.0], [4.0], [5.0]]), [])
    both = join([s0, s1])
    assert both.seeds == [0, 1] and both.target.shape == (3, 2)
    assert both.leak() == pytest.approx(abs(5.5 - 5.0) / abs(35.0 - 11.0))
    pair = ("circle", "square")
    spec = [
        Specificity(
            1.5,
            [k],
            sweeps={pair: s},
            kept_by_colour={"green": {pair: k}, "yellow": {pair: 1.0}},
            edited_by_colour={"green": {pair: 1.0 - k}, "yellow": {pair: 0.0}},
        )
        for k, s in enumerate([s0, s1])
    ]
    merged = Specificity.merge(spec)
    assert merged.leak[pair] == pytest.approx(both.leak())
    assert merged.kept_by_colour == {"green": {pair: 0.5}, "yellow": {pair: 1.0}}
    assert merged.kept[pair] == 0.5  # the pair's figure is its worst bystander colour
    assert "kept, yellow bystander" in merged.format() and merged.numbers()["worst_kept"] == 0.5
    assert merged.edited_by_colour == {"green": {pair: 0.5}, "yellow": {pair: 0.0}}
    assert merged.numbers()["worst_edited"] == 0.0 and "least edited 0.00" in merged.format()


def test_the_seeds_behind_a_leak_are_counted():
    nan = np.nan
    # four seeds: the subject grows 100 px on average; seed 1's bystander jumps 256 px (a swap), seed 3's subject is
    # lost at the last alpha while its bystander doubles (a merge: its change counts, the subject is also lost)
    target = np.array([[300.0, 300.0, 200.0, 190.0], [400.0, 400.0, 300.0, nan]])
    other = np.array([[100.0, 58.0, 120.0, 260.0], [110.0, 314.0, 130.0, 563.0]])
    sweep = Sweep([0.0, 1.5], [0, 1, 2, 3], target, other, [])
    assert sweep.seeds_behind_leak() == (2, 1)
    assert sweep.seeds_behind_leak(share=0.05) == (4, 1)  # every bystander moved by more than 5 px
    assert Sweep([0.0, 1.5], [0], target[:, :1], None, []).seeds_behind_leak() == (0, 0)
    spec = Specificity(
        1.5, [0, 1, 2, 3], leak={("square", "triangle"): sweep.leak()}, growth={("square", "triangle"): 100.0}
    )
    spec.sweeps[("square", "triangle")] = sweep
    assert spec.numbers()["pairs"]["square -> triangle"]["seeds_moved_lost"] == (2, 1)
    assert re.search(r"square → triangle\s+[\d.]+\s+100\s+2, 1", spec.format())


def test_a_bystander_of_the_edits_own_colours_is_refused():
    refused = "bystander_colours=.*'blue' is not allowed here; pick from \\['green', 'yellow'\\]"
    with pytest.raises(ValueError, match=refused):
        specificity(None, None, bystander_colours=("green", "blue"))


def test_a_leak_is_unbounded_when_the_edit_left_its_subject_as_it_was():
    assert leak_ratio(-24.0, 0.5) == pytest.approx(0.5 / 24.0)
    assert leak_ratio(0.0, 3.0) == float("inf")  # was 3e6: |Δ other| ÷ 1e-6
    assert leak_ratio(0.0, 0.0) == 0.0  # nothing moved: nothing leaked (ρ says the edit did nothing)
    flat = Sweep([0.0, 1.0], [0], np.array([[10.0], [10.0]]), np.array([[5.0], [8.0]]), [])
    assert flat.leak() == float("inf") and flat.leak() > 0.15


def test_the_registry_takes_any_object_with_the_section_protocol():
    class Echo:
        name, title = "echo", "Echo"

        def skip(self, model):
            return None

        def run(self, context):
            return Outcome({"x": 1})

    reg = Registry([*default_sections().sections.values(), Echo()])
    assert reg.names[-1] == "echo" and [s.name for s in reg.select(["echo", "card"])] == ["card", "echo"]
    with pytest.raises(TypeError):
        Registry([object()])
    with pytest.raises(ValueError, match="registered already"):
        Registry([Echo(), Echo()])


def test_readme_tables_are_the_committed_runs_numbers(tmp_path):
    """README's marked tables equal what reports/shapes/results.json gives, and a changed number is caught."""
    if not COMMITTED.exists():
        pytest.skip("no committed reports/shapes/results.json")
    text = README.read_text()
    assert set(blocks(text)) >= {"layout"}, "README has no <!-- reproduce:... --> blocks"
    assert check_readme(README, COMMITTED) == []
    res = json.loads(COMMITTED.read_text())
    res["sections"]["layout"]["numbers"]["methods"]["backward"]["in_box"] += 0.1
    changed = tmp_path / "results.json"
    changed.write_text(json.dumps(res))
    assert "layout" in check_readme(README, changed)
    assert fill(text, rendered(res)) != text


def test_learn_delta_spreads_several_configs_over_two_processes(tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"
    if not launcher.exists() or shutil.which("git") is None:
        pytest.skip("accelerate's launcher is not installed beside this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1", "PYTHONPATH": str(ROOT)}
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "reprolib.learn_delta", "--model", "tiny-sd15"]
    cmd += ["--prompts", "shapes/size", "shapes/colour", "--max-steps", "1", "--grad-accum", "1", "--steps", "2"]
    cmd += ["--out", str(tmp_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "shapes_size" / "delta.safetensors").exists()
    assert (tmp_path / "shapes_colour" / "delta.safetensors").exists()
