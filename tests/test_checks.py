"""The checked boundary (issue 15): every bad input is a clear error that names the parameter.

The table keeps the probe's cases as regressions: each row is a bad call, the error type it must raise
and the words its message must contain (the parameter's name, and where useful the fix). Valid calls
are checked to stay bit-identical elsewhere (test_foundation, test_contrastive, ...); here a few
control rows check that the checks do not refuse good input.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from reprolib import checks
from reprolib.checks import InputError, InputTypeError, NonFiniteError
from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.delta import Delta, MissingDelta
from reprolib.device import pick_device, pick_dtype
from reprolib.evaluation.__main__ import main as evaluation_cli
from reprolib.evaluation.faithfulness import faithfulness
from reprolib.evaluation.localisation import localisation
from reprolib.generate import generate
from reprolib.layout import BoxError, LayoutConfig, LayoutGuidance
from reprolib.layout.__main__ import main as layout_cli
from reprolib.learn_delta import heldout_loss, learn_delta
from reprolib.learn_delta.__main__ import main as learn_cli
from reprolib.maps import attention_maps
from reprolib.pipelines import ModelNotAvailable, load_pipeline, model_defaults
from reprolib.prompts import ConfigError, load_config
from reprolib.tiny import tiny_pipeline
from reprolib.tokens import SpanError, token_span
from reprolib.widgets import Attribute, attribute_slider

PROMPT = "a red circle and a blue square"
NAN, INF = math.nan, math.inf
PAIR = {"prompt_target": "circle", "prompt_positive": "big circle", "prompt_negative": "small circle"}
CFG = {"tag": "t", "prefixes": ["a"], "prompts": [{**PAIR, "pattern_target": "circle"}]}
TINY_LEARN = dict(max_steps=1, grad_accum_steps=1, scale_batch_size=1, num_steps=2, cache_size=1, progress=False)


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    """What the rows use: a tiny SD 1.5 pipeline, a delta that fits it, its tokens, a scratch folder."""
    pipe = tiny_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    cond = TextConditioning(pipe)
    delta = Delta({k: torch.full((v,), 0.1) for k, v in cond.dims.items()})
    tmp = tmp_path_factory.mktemp("checks")
    (tmp / "file.txt").write_text("user data")
    (tmp / "not_a_pipeline").mkdir()
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    (broken / "reprolib.json").write_text("[1, 2")
    return SimpleNamespace(pipe=pipe, d=delta, toks=cond.tokenize(PROMPT), tmp=tmp)


def gen(c, **kw):
    return generate(c.pipe, kw.pop("prompt", PROMPT), **kw)


# (id, call, error type, words the message must contain: the parameter first)
CASES = [
    # seeds
    ("seed-str", lambda c: gen(c, seed="12"), InputTypeError, ["seed", "'12'"]),
    ("seed-float", lambda c: gen(c, seed=1.5), TypeError, ["seed", "1.5"]),
    ("seed-bool", lambda c: gen(c, seed=True), TypeError, ["seed"]),
    ("seed-empty", lambda c: gen(c, seed=[]), InputError, ["seed", "at least one"]),
    ("seed-list-with-str", lambda c: gen(c, seed=[0, "1"]), TypeError, ["seed"]),
    ("seed-list-with-float", lambda c: gen(c, seed=[0, 2.0]), TypeError, ["seed"]),
    ("seed-too-big", lambda c: gen(c, seed=2**70), InputError, ["seed", "range"]),
    ("seed-none", lambda c: gen(c, seed=None), TypeError, ["seed"]),
    # steps
    ("steps-zero", lambda c: gen(c, steps=0), InputError, ["steps", "at least 1", "None"]),
    ("steps-negative", lambda c: gen(c, steps=-3), InputError, ["steps", "-3"]),
    ("steps-float", lambda c: gen(c, steps=2.5), TypeError, ["steps"]),
    ("steps-str", lambda c: gen(c, steps="10"), TypeError, ["steps"]),
    # guidance scale
    ("cfg-nan", lambda c: gen(c, guidance_scale=NAN), InputError, ["guidance_scale", "finite"]),
    ("cfg-inf", lambda c: gen(c, guidance_scale=INF), InputError, ["guidance_scale", "inf"]),
    ("cfg-str", lambda c: gen(c, guidance_scale="7"), TypeError, ["guidance_scale"]),
    # sizes (tiny: VAE factor 2, one halving → multiples of 2, at least 4)
    ("height-odd", lambda c: gen(c, height=63), InputError, ["height=63", "multiple of 2", "62 or 64"]),
    ("height-zero", lambda c: gen(c, height=0), InputError, ["height=0", "at least 4"]),
    ("width-negative", lambda c: gen(c, width=-32), InputError, ["width=-32"]),
    ("height-tiny", lambda c: gen(c, height=2), InputError, ["height=2", "nearest valid: 4"]),
    ("height-float", lambda c: gen(c, height=32.0), TypeError, ["height"]),
    # delay
    ("delay-above-one", lambda c: gen(c, delay=1.5), InputError, ["delay", "between 0"]),
    ("delay-negative", lambda c: gen(c, delay=-0.1), InputError, ["delay"]),
    ("delay-nan", lambda c: gen(c, delay=NAN), InputError, ["delay", "finite"]),
    # edits
    ("edit-2-tuple", lambda c: gen(c, edits=[(c.d, "circle")]), TypeError, ["edits[0]", "(delta, pattern, alpha)"]),
    ("edit-alpha-nan", lambda c: gen(c, edits=[(c.d, "circle", NAN)]), InputError, ["edits[0] alpha", "finite"]),
    ("edit-alpha-inf", lambda c: gen(c, edits=[(c.d, "circle", -INF)]), InputError, ["edits[0] alpha"]),
    ("edit-alpha-str", lambda c: gen(c, edits=[(c.d, "circle", "1.5")]), TypeError, ["edits[0] alpha"]),
    ("edit-not-a-delta", lambda c: gen(c, edits=[("size", "circle", 1.0)]), TypeError, ["edits[0][0]", "Delta"]),
    # a five-tuple (with its own delay) has its reach checked as a four-tuple's is
    ("edit-5-tuple-reach", lambda c: gen(c, edits=[(c.d, "circle", 1.0, "all", 0.1)]), InputError, ["reach", "'all'"]),
    ("edit-empty-pattern", lambda c: gen(c, edits=[(c.d, " ", 1.0)]), InputError, ["edits[0] pattern", "empty"]),
    ("edit-pattern-int", lambda c: gen(c, edits=[(c.d, 5, 1.0)]), TypeError, ["edits[0] pattern"]),
    ("edit-unwrapped", lambda c: gen(c, edits=(c.d, "circle", 1.0)), TypeError, ["edits", "list"]),
    ("edit-not-a-tuple", lambda c: gen(c, edits=[c.d]), TypeError, ["edits[0]"]),
    (
        "edit-regex-chars",
        lambda c: gen(c, edits=[(c.d, "(red) circle", 1.0)]),
        SpanError,
        ["(red) circle", "literally"],
    ),
    ("edit-missing-word", lambda c: gen(c, edits=[(c.d, "triangle", 1.0)]), SpanError, ["triangle", "tokens"]),
    # prompts
    ("prompt-empty-list", lambda c: gen(c, prompt=[]), InputError, ["prompt", "at least one"]),
    ("prompt-int", lambda c: gen(c, prompt=5), TypeError, ["prompt"]),
    ("prompt-list-with-int", lambda c: gen(c, prompt=["a", 3]), TypeError, ["prompt", "3"]),
    ("prompts-vs-seeds", lambda c: gen(c, prompt=["a", "b"], seed=[0, 1, 2]), ValueError, ["prompts", "seeds"]),
    ("negative-prompt-int", lambda c: gen(c, negative_prompt=3), TypeError, ["negative_prompt"]),
    ("until-past-steps", lambda c: gen(c, steps=2, until=5), ValueError, ["until"]),
    ("boxes-outside", lambda c: gen(c, boxes={"circle": (0, 0, 2, 2)}), BoxError, ["circle"]),
    # attention maps
    ("maps-steps-negative", lambda c: attention_maps(c.pipe, PROMPT, steps=-1), InputError, ["steps", "-1"]),
    (
        "maps-record-99",
        lambda c: attention_maps(c.pipe, PROMPT, steps=3, record_steps=[99]),
        InputError,
        ["record_steps", "99", "0 to 2"],
    ),
    (
        "maps-record-negative",
        lambda c: attention_maps(c.pipe, PROMPT, steps=3, record_steps=[-1]),
        InputError,
        ["record_steps"],
    ),
    (
        "maps-record-empty",
        lambda c: attention_maps(c.pipe, PROMPT, steps=3, record_steps=[]),
        InputError,
        ["record_steps", "None"],
    ),
    ("maps-two-seeds", lambda c: attention_maps(c.pipe, PROMPT, seed=[0, 1]), TypeError, ["seed"]),
    ("maps-two-prompts", lambda c: attention_maps(c.pipe, [PROMPT, PROMPT]), TypeError, ["prompt"]),
    ("maps-height", lambda c: attention_maps(c.pipe, PROMPT, height=33), InputError, ["height=33"]),
    ("maps-word-missing", lambda c: attention_maps(c.pipe, PROMPT, words=["triangle"]), SpanError, ["triangle"]),
    # the slider
    (
        "slider-values-nan",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], values=(-2, NAN, 0.25)),
        InputError,
        ["values max"],
    ),
    (
        "slider-values-2",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], values=(-2, 2)),
        TypeError,
        ["values"],
    ),
    (
        "slider-cache-0",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], cache_size=0),
        InputError,
        ["cache_size"],
    ),
    (
        "slider-typo-kwarg",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], step=10),
        TypeError,
        ["step", "allowed"],
    ),
    ("slider-steps-0", lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], steps=0), InputError, ["steps"]),
    (
        "slider-attribute-delay-2",
        lambda c: attribute_slider(c.pipe, PROMPT, [Attribute(c.d, "circle", delay=2)]),
        InputError,
        ["delay", "2"],
    ),
    ("slider-seed-str", lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], seed="1"), TypeError, ["seed"]),
    (
        "slider-4-tuple",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle", "size", 1)]),
        TypeError,
        ["attribute"],
    ),
    (
        "slider-delay-nan",
        lambda c: attribute_slider(c.pipe, PROMPT, [(c.d, "circle")], delay=NAN),
        InputError,
        ["delay"],
    ),
    # contrastive deltas and prompt configs
    ("contrastive-batch-0", lambda c: contrastive_delta(c.pipe, CFG, batch_size=0), InputError, ["batch_size"]),
    ("contrastive-batch-float", lambda c: contrastive_delta(c.pipe, CFG, batch_size=1.5), TypeError, ["batch_size"]),
    ("contrastive-token", lambda c: contrastive_delta(c.pipe, CFG, token="first"), InputError, ["token", "first"]),
    (
        "config-prefixes-empty",
        lambda c: contrastive_delta(c.pipe, {**CFG, "prefixes": []}),
        ConfigError,
        ["prefixes", "empty"],
    ),
    ("config-prefixes-ints", lambda c: load_config({**CFG, "prefixes": [1, 2]}), ConfigError, ["prefixes"]),
    ("config-no-prompts", lambda c: load_config({"tag": "t"}), ConfigError, ["prompts"]),
    ("config-unknown-name", lambda c: load_config("shapes/sizes"), ConfigError, ["shapes/sizes", "shapes/size"]),
    # layout settings
    ("layout-eta-nan", lambda c: LayoutConfig(eta=NAN), InputError, ["eta", "finite"]),
    ("layout-threshold-inf", lambda c: LayoutConfig(loss_threshold=INF), InputError, ["loss_threshold"]),
    ("layout-iters-float", lambda c: LayoutConfig(max_iters=1.5), TypeError, ["max_iters"]),
    ("layout-strength-2", lambda c: LayoutConfig(forward_strength=2.0), InputError, ["forward_strength"]),
    ("layout-mode", lambda c: LayoutConfig(mode="sideways"), InputError, ["mode", "sideways"]),
    # learning
    (
        "learn-cfg-nan",
        lambda c: learn_delta(c.pipe, CFG, guidance_scale=NAN, **TINY_LEARN),
        InputError,
        ["guidance_scale", "finite"],
    ),
    ("learn-lr-0", lambda c: learn_delta(c.pipe, CFG, lr=0.0, **TINY_LEARN), InputError, ["lr", "positive"]),
    ("learn-lr-nan", lambda c: learn_delta(c.pipe, CFG, lr=NAN, **TINY_LEARN), InputError, ["lr"]),
    (
        "learn-num-steps-0",
        lambda c: learn_delta(c.pipe, CFG, **{**TINY_LEARN, "num_steps": 0}),
        InputError,
        ["num_steps"],
    ),
    (
        "learn-max-steps-0",
        lambda c: learn_delta(c.pipe, CFG, **{**TINY_LEARN, "max_steps": 0}),
        InputError,
        ["max_steps"],
    ),
    (
        "learn-accum-float",
        lambda c: learn_delta(c.pipe, CFG, **{**TINY_LEARN, "grad_accum_steps": 1.5}),
        TypeError,
        ["grad_accum_steps"],
    ),
    ("learn-height", lambda c: learn_delta(c.pipe, CFG, height=31, **TINY_LEARN), InputError, ["height=31"]),
    ("learn-seed-float", lambda c: learn_delta(c.pipe, CFG, seed=0.5, **TINY_LEARN), TypeError, ["seed"]),
    ("learn-refresh-nan", lambda c: learn_delta(c.pipe, CFG, refresh=NAN, **TINY_LEARN), InputError, ["refresh"]),
    ("learn-scheme", lambda c: learn_delta(c.pipe, CFG, scheme="fast", **TINY_LEARN), InputError, ["scheme"]),
    ("heldout-samples-0", lambda c: heldout_loss(c.pipe, CFG, c.d, samples=0), InputError, ["samples"]),
    ("heldout-cfg-nan", lambda c: heldout_loss(c.pipe, CFG, c.d, guidance_scale=NAN), InputError, ["guidance_scale"]),
    # deltas
    ("delta-missing-file", lambda c: Delta.load(c.tmp / "nope.safetensors"), MissingDelta, ["nope.safetensors"]),
    ("delta-folder", lambda c: Delta.load(c.tmp), InputError, ["folder"]),
    ("delta-not-safetensors", lambda c: Delta.load(c.tmp / "file.txt"), ValueError, ["file.txt", "safetensors"]),
    # models and devices
    ("model-unknown-name", lambda c: load_pipeline("sd14"), InputError, ["sd14", "known names", "sd15"]),
    ("model-missing-folder", lambda c: load_pipeline(str(c.tmp / "a" / "b")), InputError, ["does not exist"]),
    ("model-missing-path", lambda c: load_pipeline(c.tmp / "nothing"), InputError, ["nothing", "does not exist"]),
    (
        "model-not-a-pipeline",
        lambda c: load_pipeline(c.tmp / "not_a_pipeline"),
        ModelNotAvailable,
        ["not a diffusers pipeline", "model_index.json"],
    ),
    ("model-broken-index", lambda c: load_pipeline(c.tmp / "broken"), InputError, ["model_index.json", "JSON"]),
    ("model-broken-defaults", lambda c: model_defaults(c.tmp / "broken"), InputError, ["reprolib.json", "JSON"]),
    ("model-type", lambda c: load_pipeline(5), TypeError, ["model"]),
    ("device-name", lambda c: pick_device("gpu"), InputError, ["device='gpu'", "available: cpu"]),
    ("device-index", lambda c: pick_device("cuda:7"), InputError, ["cuda:7", "available:"]),
    ("dtype-name", lambda c: pick_dtype(torch.device("cpu"), "fp8"), InputError, ["dtype", "fp8"]),
    # evaluation probes
    ("faithfulness-n-0", lambda c: faithfulness(c.pipe, 0), InputError, ["n ", "at least 1"]),
    ("faithfulness-n-negative", lambda c: faithfulness(c.pipe, -5), InputError, ["n "]),
    ("localisation-0", lambda c: localisation(c.pipe, 0), InputError, ["n_scenes"]),
    # token patterns
    ("pattern-empty", lambda c: token_span(c.toks, ""), InputError, ["pattern", "empty"]),
    ("pattern-bad-regex", lambda c: token_span(c.toks, "[", regex=True), InputError, ["pattern", "regex"]),
    ("pattern-none", lambda c: token_span(c.toks, None), TypeError, ["pattern"]),
    # output paths
    (
        "out-existing-file",
        lambda c: checks.output_path(c.tmp / "file.txt", "--json"),
        InputError,
        ["--json", "exists", "--overwrite"],
    ),
    (
        "out-file-as-folder",
        lambda c: checks.output_path(c.tmp / "file.txt", "--out", folder=True),
        InputError,
        ["--out", "is a file"],
    ),
    ("out-folder-as-file", lambda c: checks.output_path(c.tmp, "--json"), InputError, ["--json", "is a folder"]),
    (
        "out-under-a-file",
        lambda c: checks.output_path(c.tmp / "file.txt" / "x", "--out", folder=True),
        InputError,
        ["--out", "not a writable folder"],
    ),
]


@pytest.mark.parametrize("call, error, words", [pytest.param(*row[1:], id=row[0]) for row in CASES])
def test_bad_input_is_a_clear_error(c, call, error, words):
    if "cuda" in words[0] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(error) as e:
        call(c)
    message = str(e.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"the message lacks {missing}: {message}"
    # user errors are one family: a CLI prints them as one line (SpanError, ConfigError, ... included)
    assert isinstance(e.value, (InputError, ValueError, TypeError))


def test_the_table_holds_the_probes_cases():
    assert len(CASES) >= 60 and len({row[0] for row in CASES}) == len(CASES)


def test_library_errors_are_input_errors():
    for cls in (SpanError, ConfigError, BoxError, ModelNotAvailable, MissingDelta):
        assert issubclass(cls, InputError), cls
    assert issubclass(MissingDelta, FileNotFoundError) and issubclass(ModelNotAvailable, RuntimeError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_names_the_devices_there():
    with pytest.raises(InputError, match=r"torch sees no GPU; available: cpu"):
        load_pipeline("tiny-sd15", device="cuda")


# ----------------------------------------------------------------------------- handled: a warning, said once


def test_a_huge_alpha_warns(c):
    with pytest.warns(RuntimeWarning, match=r"edits\[0\] alpha=1e\+06"):
        gen(c, steps=1, edits=[(c.d, "circle", 1e6)], delay=0.0, output_type="latent")


def test_a_long_prompt_warns_once_saying_what_was_cut(c):
    long = "a red circle " + " ".join(f"w{i}" for i in range(120)) + " zebra"
    with pytest.warns(UserWarning) as rec:
        gen(c, prompt=long, steps=1, output_type="latent")
    cut = [str(w.message) for w in rec if "cut" in str(w.message)]
    assert len(cut) == 1 and "zebra" in cut[0] and "77 tokens" in cut[0]
    assert "'a red circle" not in cut[0].split("cut:")[1].split(" of ")[0]  # the kept words are not listed


def test_delay_that_leaves_no_edited_step_warns(c):
    with pytest.warns(RuntimeWarning, match="never applied"):
        gen(c, steps=2, edits=[(c.d, "circle", 1.0)], delay=1.0, output_type="latent")


def test_valid_edge_values_pass(c):
    """Controls: the checks do not refuse what is valid (numpy numbers, a range of seeds, the smallest size)."""
    out = gen(c, prompt=[PROMPT], seed=range(2), steps=1, delay=1.0, height=4, width=6, output_type="latent")
    assert out.shape[-2:] == (2, 3)
    gen(c, seed=np.int64(3), steps=np.int32(1), guidance_scale=np.float32(2.0), output_type="latent")
    assert token_span(c.toks, re.compile("blue (square)")) == token_span(c.toks, "square")


# ----------------------------------------------------------------------------- non-finite values during sampling


class PoisonStep:
    """A step hook that makes the latents NaN at one step (a stand-in for an fp16 overflow)."""

    def __init__(self, at: int):
        self.at = at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def before_step(self, i, t, latents, cond_embeddings):
        return latents * math.nan if i == self.at else latents


def test_nan_latents_stop_with_an_error_never_a_black_image(c):
    with pytest.raises(NonFiniteError, match="NaN/inf latents at timestep"):
        gen(c, steps=3, hooks=[PoisonStep(1)])


def test_nan_layout_energy_skips_the_update_with_one_warning(c):
    cond = TextConditioning(c.pipe)
    emb = cond.encode([PROMPT])
    g = LayoutGuidance(
        cond, emb.tokens, {"circle": (0, 0, 0.5, 0.5)}, LayoutConfig(eta=1.0, guidance_steps=3), height=64, width=64
    )
    g.energy = lambda *a, **k: torch.full((1,), math.nan, requires_grad=True)  # the energy goes NaN
    x = torch.randn(1, 4, 32, 32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with g:
            out = [g.before_step(i, c.pipe.scheduler.timesteps[0], x, emb) for i in range(3)]
    said = [w for w in rec if "layout guidance" in str(w.message)]
    assert len(said) == 1 and all(torch.equal(o, x) for o in out)
    assert not any(h["updated"] for h in g.history)


# ----------------------------------------------------------------------------- Delta files


def test_delta_saved_as_pt_loads_back(c, tmp_path):
    c.d.save(tmp_path / "x.pt")
    back = Delta.load(tmp_path / "x.pt")
    assert back.vectors.keys() == c.d.vectors.keys()
    assert all(torch.equal(back.vectors[k], v) for k, v in c.d.vectors.items())


# ----------------------------------------------------------------------------- CLIs: one line, exit 2, before loading


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "module, args, words",
    [
        ("reprolib.layout", ["--prompt", "a red circle", "--box", "red circle=0,0,.5,.5", "--cfg", "nan"], "--cfg"),
        ("reprolib.evaluation", ["--n", "-5"], "--n"),
        ("reprolib.learn_delta", ["--prompts", "shapes/size", "--lr", "inf"], "--lr"),
    ],
    ids=["layout-cfg-nan", "evaluation-n-negative", "learn-delta-lr-inf"],
)
def test_cli_user_error_is_one_line_and_exit_2(module, args, words, tmp_path):
    # --model names a model that would take long to load (or fail): the argument error must come first
    r = _cli(module, "--model", "sdxl", *args, *(["--out", str(tmp_path / "o")] if "evaluation" not in module else []))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_errors_in_process(tmp_path, capsys):
    """The same wrapper for the other arguments, without a process each (they fail before any model is loaded)."""
    evaluation, layout, learn = evaluation_cli, layout_cli, learn_cli
    box = ["--prompt", "a red circle", "--box", "red circle=0,0,.5,.5", "--model", "sdxl"]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "image.png").write_bytes(b"mine")
    (tmp_path / "file").write_text("mine")
    cases = [
        (layout, [*box, "--out", str(tmp_path / "taken")], "--overwrite"),
        (layout, [*box, "--out", str(tmp_path / "file")], "is a file"),
        (layout, [*box, "--steps", "0", "--out", str(tmp_path / "o")], "--steps"),
        (layout, [*box, "--eta", "inf", "--out", str(tmp_path / "o")], "eta"),
        (evaluation, ["--specificity", "-1"], "--specificity"),
        (evaluation, ["--order-bias", "-1"], "--order-bias"),
        (evaluation, ["--near-pairs", "-1"], "--near-pairs"),
        (evaluation, ["--n", "1", "--json", str(tmp_path / "file")], "--json"),
        (learn, ["--prompts", "shapes/sizes", "--out", str(tmp_path / "o"), "--model", "sdxl"], "shapes/sizes"),
        (learn, ["--prompts", "shapes/size", "--out", str(tmp_path / "file"), "--model", "sdxl"], "is a file"),
        (learn, ["--prompts", "shapes/size", "--out", str(tmp_path / "o"), "--steps", "0"], "--steps"),
        (learn, ["--prompts", "shapes/size", "--out", str(tmp_path / "o"), "--init", "nope.pt"], "--init"),
    ]
    for main, argv, words in cases:
        rc = checks.run_cli(main, argv, "prog")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], (argv, err)
    assert (tmp_path / "taken" / "image.png").read_bytes() == b"mine" and (tmp_path / "file").read_text() == "mine"


def test_cli_argparse_refusals(capsys):
    for argv, words in [
        (["--n", "0"], "nothing to measure"),
        (["--model", "tiny-sd15", "--card", "--n", "2", "--attention", "2"], "--card"),
        (["--n", "1", "--order-mix", "v5"], "--order-bias"),
        (["--order-bias", "1", "--order-mix", "v99"], "--order-mix"),
    ]:
        with pytest.raises(SystemExit) as e:
            evaluation_cli(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_evaluation_measures_a_given_size_delta(tmp_path, monkeypatch, capsys, shapes_pipe):
    """--size-delta FILE: the leak table of that delta (a learned one, say), not of the contrastive one."""
    import reprolib.evaluation.__main__ as cli
    from reprolib.evaluation.specificity import Specificity

    mine = contrastive_delta(shapes_pipe, "shapes/size") * 2.0
    path = mine.save(tmp_path / "size.safetensors")
    seen = {}

    def fake(pipe, size, colour, *, seeds, **kw):
        seen.update(size=size, seeds=list(seeds), **kw)
        return Specificity(1.5, list(seeds), leak={("circle", "square"): 0.0}, growth={("circle", "square"): 1.0})

    monkeypatch.setattr(cli, "specificity", fake)
    monkeypatch.setattr(cli, "load_pipeline", lambda model: shapes_pipe)
    assert cli.main(["--n", "0", "--specificity", "2", "--size-delta", str(path)]) == 0
    assert seen["seeds"] == [0, 1] and set(seen["size"].vectors) == set(mine.vectors)
    assert seen["colours"] == ("red", "blue") and seen["bystander_colours"] == ("green",)  # the card's defaults
    for k, v in mine.vectors.items():
        assert torch.equal(seen["size"].vectors[k], v)
    more = ["--bystander-colours", "green", "yellow", "--leak-bystander", "yellow"]
    assert cli.main(["--n", "0", "--specificity", "2", "--size-delta", str(path), *more]) == 0
    assert seen["colours"] == ("red", "yellow") and seen["bystander_colours"] == ("green", "yellow")
    for k, v in mine.vectors.items():
        assert torch.equal(seen["size"].vectors[k], v)
    # a delta read off other text-encoder weights is refused by name before anything is measured
    other = Delta({k: torch.ones_like(v) for k, v in mine.vectors.items()}, {**mine.meta, "fingerprint": {"x": [9.0]}})
    other_path = other.save(tmp_path / "other.safetensors")
    seen.clear()
    rc = checks.run_cli(cli.main, ["--n", "0", "--specificity", "2", "--size-delta", str(other_path)], "prog")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "delta" in err[0] and not seen, err


def test_evaluation_size_delta_refusals(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluation_cli(["--n", "1", "--size-delta", str(tmp_path / "d.safetensors")])
    assert e.value.code == 2 and "--specificity" in capsys.readouterr().err
    rc = checks.run_cli(evaluation_cli, ["--specificity", "1", "--size-delta", str(tmp_path / "nope.safetensors")], "p")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.safetensors" in err[0], err


def test_a_bug_keeps_its_traceback():
    def buggy(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        checks.run_cli(buggy, [])


def test_cli_json_settings_written_by_layout_are_valid(tmp_path):
    """A control: valid arguments still run end to end and write their files."""
    rc = layout_cli(
        [
            "--model",
            "tiny-sd15",
            "--prompt",
            PROMPT,
            "--box",
            "red circle=0,0,.5,.5",
            "--steps",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0 and json.loads((tmp_path / "settings.json").read_text())["steps"] == 1


@pytest.mark.parametrize(
    "argv, flag",
    [(["--leak-bystander", "red"], "--leak-bystander"), (["--bystander-colours", "blue"], "--bystander-colours")],
)
def test_evaluation_refuses_a_bystander_colour_outside_its_choices(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        evaluation_cli(["--n", "0", "--specificity", "1", *argv])
    assert e.value.code == 2 and flag in capsys.readouterr().err
