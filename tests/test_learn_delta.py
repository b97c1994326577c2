"""learn_delta: the original objective (sampling, targets, counts), the cached scheme, resume, errors, CLI."""

import json

import pytest
import torch
from diffusers import DDIMScheduler

from reprolib.conditioning import TextConditioning
from reprolib.delta import Delta, DeltaMismatch
from reprolib.learn_delta import NonFiniteLoss, Problem, RunConflict, TrajectoryPool, learn_delta, to_prediction
from reprolib.learn_delta.__main__ import main
from reprolib.prompts import ConfigError, Pair, PromptConfig
from reprolib.tokens import SpanError

CFG = PromptConfig(
    "test/size",
    [
        Pair("red circle", "big red circle", "small red circle", "circle"),
        Pair("blue square", "big blue square", "small blue square", "square"),
    ],
    ["a", "a green circle and a"],
)  # the prefix's "circle" is not the subject
TINY = dict(
    max_steps=2, grad_accum_steps=2, scale_batch_size=2, num_steps=4, height=32, width=32, cache_size=2, progress=False
)


def _files(d):
    return {p.name: p.read_bytes() for p in sorted((d / "checkpoints").glob("*"))}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("scheme", ["original", "cached"])
def test_learns_a_delta(family, scheme, request):
    pipe = request.getfixturevalue(family)
    flags = [p.requires_grad for p in pipe.unet.parameters()]
    d = learn_delta(pipe, CFG, scheme=scheme, gradient_checkpointing=True, **TINY)
    cond = TextConditioning(pipe)
    d.check(cond)  # one vector per encoder, of its width
    assert d.norm() > 0  # moved from zero
    assert all(torch.isfinite(v).all() for v in d.vectors.values())
    assert d.meta["method"] == "learned" and d.meta["tag"] == "test/size" and d.meta["steps"] == 2
    assert d.meta["scheme"] == scheme and d.meta["final_loss"] == d.history[-1]["loss"]
    assert all(loss == loss and loss < float("inf") for loss in d.meta["loss_history"])
    # the pipeline is left as found: grads flags back, no checkpointing, no counter on a fresh adapter
    assert [p.requires_grad for p in pipe.unet.parameters()] == flags
    assert not pipe.unet.is_gradient_checkpointing


def test_gradient_checkpointing_changes_nothing(sd15):
    a = learn_delta(sd15, CFG, **{**TINY, "max_steps": 1})
    b = learn_delta(sd15, CFG, gradient_checkpointing=True, **{**TINY, "max_steps": 1})
    for k in a.vectors:
        torch.testing.assert_close(a.vectors[k], b.vectors[k])


@pytest.mark.parametrize("family", ["sd15", "sd21"])  # epsilon and v-prediction
def test_x0_and_eps_predictions_are_consistent(family, request):
    pipe = request.getfixturevalue(family)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x0 = to_prediction(out, x, t, sched, "x0")
    eps = to_prediction(out, x, t, sched, "eps")
    torch.testing.assert_close(x0, sched.step(out, t, x).pred_original_sample)  # the scheduler's own x0
    a = sched.alphas_cumprod[int(t)]
    torch.testing.assert_close(x, a.sqrt() * x0 + (1 - a).sqrt() * eps)  # x_t = √ᾱ x0 + √(1−ᾱ) ε


def test_x0_loss_is_eps_loss_over_snr(sd21):
    """With Δ = 0 (all of step 1), each micro-step's x0-loss is its ε-loss × (1−ᾱ)/ᾱ at the predicted t."""
    kw = {**TINY, "max_steps": 1, "grad_accum_steps": 3}
    x0 = learn_delta(sd21, CFG, target="x0", **kw)
    eps = learn_delta(sd21, CFG, target="eps", **kw)
    assert x0.history[0]["i"] == eps.history[0]["i"]  # the same draws
    sched = DDIMScheduler.from_config(sd21.scheduler.config)
    sched.set_timesteps(kw["num_steps"])
    for i, lx, le in zip(x0.history[0]["i"], x0.history[0]["losses"], eps.history[0]["losses"]):
        a = float(sched.alphas_cumprod[int(sched.timesteps[i])])
        assert lx == pytest.approx(le * (1 - a) / a, rel=1e-3)
    assert not torch.allclose(x0.vectors["clip"], eps.vectors["clip"])


def test_sampling_is_the_pipelines(sd15):
    p = Problem(
        sd15, CFG, seed=0, target="x0", num_steps=4, guidance_scale=7.5, scale_batch_size=2, height=32, width=32
    )
    key = ("noise", "test", 0)
    ours = p.sample(1, key, 4)
    text = PromptConfig.join(*[(pre, pair.target) for pre, pair in [CFG.combinations()[1]]][0])
    ref = sd15(
        text, latents=p.noise(key), num_inference_steps=4, guidance_scale=7.5, height=32, width=32, output_type="latent"
    ).images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    xs, outs = p.sample(1, key, 4, keep=True)  # a cached trajectory passes through every partial sample
    torch.testing.assert_close(xs[2], p.sample(1, key, 2))
    assert len(xs) == 5 and len(outs) == 4


@torch.no_grad()
def test_cached_targets_equal_fresh_ones(sd21):
    """A cached cell (target prediction taken from the guided step, or computed) = the original's three calls."""
    p = Problem(
        sd21, CFG, seed=0, target="x0", num_steps=4, guidance_scale=7.5, scale_batch_size=2, height=32, width=32
    )
    pool = TrajectoryPool(p, 1, 0.0)
    pool.advance(1)
    tr = pool.slots[0]
    c = p.combo(tr.combo)
    for k, i in [(2, 2), (2, 1), (4, 3), (0, 0)]:
        pt, diff = pool.cell(tr, k, i)
        x = p.sample(tr.combo, ("noise", "trajectory", tr.uid), k)
        fresh_t, fresh_p, fresh_n = (p.predict(x, i, c.emb[j]) for j in range(3))
        torch.testing.assert_close(pt, fresh_t, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(diff, fresh_p - fresh_n, rtol=1e-4, atol=1e-5)


def test_unet_evaluations_are_counted(sd15):
    kw = {**TINY, "num_steps": 8, "grad_accum_steps": 4, "max_steps": 3, "cache_size": 1, "refresh": 0.0}
    S, N = kw["scale_batch_size"], kw["num_steps"]
    orig = learn_delta(sd15, CFG, scheme="original", **kw)
    ks = [k for h in orig.history for k in h["k"]]
    ev = orig.meta["unet_evals"]
    assert ev["micro_steps"] == len(ks) == 12
    assert ev["rows"] == sum(2 * k + 3 + S for k in ks)  # guided sampling, 3 predictions, the scale batch
    assert ev["calls"] == sum(k + 3 + 1 for k in ks)
    assert ev["grad_rows"] == S * len(ks)

    cached = learn_delta(sd15, CFG, scheme="cached", **kw)
    assert [h["k"] for h in cached.history] == [h["k"] for h in orig.history]  # same τ stream
    cells = {(u, k, i) for h in cached.history for u, k, i in zip(h["trajectories"], h["k"], h["i"])}
    trajectories = kw["cache_size"] + int((kw["max_steps"] - 1) * kw["refresh"])
    ev2 = cached.meta["unet_evals"]
    assert ev2["rows"] == 2 * N * trajectories + sum(2 if i == k < N else 3 for _, k, i in cells) + S * 12
    assert ev2["rows"] < ev["rows"] / 2


@pytest.mark.parametrize("scheme", ["cached", "original"])
def test_resume_gives_the_uninterrupted_result(scheme, sd15, tmp_path):
    kw = {**TINY, "max_steps": 4, "refresh": 0.5, "checkpoint_every": 1, "scheme": scheme}
    straight = learn_delta(sd15, CFG, out_dir=tmp_path / "a", **kw)

    def kill(step, loss, delta):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn_delta(sd15, CFG, out_dir=tmp_path / "b", callback=kill, **kw)
    assert sorted(_files(tmp_path / "b")) == ["step_000001.pt", "step_000002.pt"]
    resumed = learn_delta(sd15, CFG, out_dir=tmp_path / "b", **kw)
    for k in straight.vectors:
        assert torch.equal(straight.vectors[k], resumed.vectors[k])
    assert resumed.meta["loss_history"] == straight.meta["loss_history"]
    saved = Delta.load(tmp_path / "b" / "delta.safetensors")
    assert torch.equal(saved.vectors["clip"], straight.vectors["clip"]) and saved.meta["steps"] == 4
    assert len(json.loads((tmp_path / "b" / "history.json").read_text())) == 4


def test_nan_loss_names_the_step_and_keeps_checkpoints(sd15, tmp_path, monkeypatch):
    kw = {**TINY, "checkpoint_every": 1}
    learn_delta(sd15, CFG, out_dir=tmp_path, **kw)
    before = _files(tmp_path)
    final = (tmp_path / "delta.safetensors").read_bytes()
    real = TextConditioning.unet
    monkeypatch.setattr(TextConditioning, "unet", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    with pytest.raises(NonFiniteLoss, match="optimizer step 3"):
        learn_delta(sd15, CFG, out_dir=tmp_path, **{**kw, "max_steps": 4})
    assert _files(tmp_path) == before  # steps 1 and 2 untouched, nothing for step 3
    assert (tmp_path / "delta.safetensors").read_bytes() == final


def test_refuses_another_runs_checkpoints(sd15, tmp_path):
    learn_delta(sd15, CFG, out_dir=tmp_path, **{**TINY, "max_steps": 1})
    before = _files(tmp_path)
    with pytest.raises(RunConflict, match="seed: 0 there vs 1 here"):
        learn_delta(sd15, CFG, out_dir=tmp_path, seed=1, **{**TINY, "max_steps": 1})
    assert _files(tmp_path) == before
    learn_delta(sd15, CFG, out_dir=tmp_path, seed=1, overwrite=True, **{**TINY, "max_steps": 1})
    assert json.loads((tmp_path / "config.json").read_text())["settings"]["seed"] == 1
    assert _files(tmp_path) != before


def test_bad_input_is_explained(sd15):
    bad = PromptConfig("bad", [Pair("red circle", "big red circle", "small red circle", "square")], ["a"])
    with pytest.raises(SpanError, match="square"):
        learn_delta(sd15, bad, **TINY)
    subject_in_prefix_only = PromptConfig(
        "bad", [Pair("red circle", "big red circle", "small red circle", "triangle")], ["a blue triangle and a"]
    )
    with pytest.raises(SpanError, match="only in the prefix"):
        learn_delta(sd15, subject_in_prefix_only, **TINY)
    with pytest.raises(ConfigError, match="no prompt config"):
        learn_delta(sd15, "shapes/no-such-attribute", **TINY)
    xl = Delta({"clip_l": torch.zeros(16), "openclip_g": torch.zeros(32)}, {"model": "tiny sdxl"})
    with pytest.raises(DeltaMismatch, match="tiny sdxl"):
        learn_delta(sd15, CFG, init=xl, **TINY)
    with pytest.raises(ValueError, match="scheme"):
        learn_delta(sd15, CFG, scheme="fast", **TINY)
    with pytest.raises(ValueError, match="target"):
        learn_delta(sd15, CFG, target="v", **TINY)


def test_init_starts_from_the_given_delta(sd15):
    init = learn_delta(sd15, CFG, **{**TINY, "max_steps": 1})
    zero = learn_delta(sd15, CFG, init=Delta({"clip": torch.zeros(32)}), **{**TINY, "max_steps": 1})
    assert torch.equal(zero.vectors["clip"], init.vectors["clip"])  # zero init is the default
    on = learn_delta(sd15, CFG, init=init, **{**TINY, "max_steps": 1})
    assert not torch.equal(on.vectors["clip"], init.vectors["clip"])


def test_cli_on_tiny_sd15(tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "--model",
            "tiny-sd15",
            "--prompts",
            "shapes/size",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--grad-accum",
            "2",
            "--scale-batch-size",
            "2",
            "--steps",
            "4",
            "--cache-size",
            "1",
            "--height",
            "32",
            "--width",
            "32",
            "--no-compile",
            "--gradient-checkpointing",
            "--cosine",
        ]
    )
    d = Delta.load(out / "delta.safetensors")
    assert d.meta["method"] == "learned" and d.meta["model"] == "tiny-sd15" and d.meta["tag"] == "shapes/size"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["settings"]["cosine"] is True and cfg["settings"]["num_steps"] == 4 and cfg["max_steps"] == 2
    assert "UNet rows per micro-step" in capsys.readouterr().out


def test_cost_benchmark_script_runs_on_a_tiny_pipeline(capsys, bench_script):
    """benchmarks/learn_delta_cost.py end to end on a random tiny SD 1.5 (the script itself, not its figures)."""
    bench = bench_script("learn_delta_cost")
    res = bench.main(
        [
            "--model",
            "tiny-sd15",
            "--prompts",
            "shapes/size",
            "--steps",
            "2",
            "--grad-accum",
            "2",
            "--scale-batch-size",
            "2",
            "--num-steps",
            "4",
            "--heldout",
            "2",
            "--project",
            "3",
            "--height",
            "32",
            "--width",
            "32",
        ]
    )
    assert set(res) == {"original", "cached", "projected"}
    assert res["original"]["rows"] > 0 and res["cached"]["rows"] > 0
    assert "fewer rows" in capsys.readouterr().out


def test_the_edited_embedding_keeps_a_masked_models_padding_mask(sd15):
    """A model sampled with its padding masked is also learned through the mask (all rows alike)."""
    from reprolib.learn_delta.objective import Problem

    sd15.reprolib_defaults = {"mask_padding": True}
    p = Problem.with_defaults(sd15, "shapes/size", seed=0, target="x0", num_steps=2, scale_batch_size=3)
    c = p.combo(0)
    e = p.edited(c, {k: torch.zeros(d) for k, d in p.cond.dims.items()}, torch.ones(3))
    assert e.mask is not None and torch.equal(e.mask, c.emb.mask[:1].expand(3, -1))
