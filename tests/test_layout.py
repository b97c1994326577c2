"""Layout guidance (reprolib.layout): boxes, energy, the step size per scheduler, the hook, the CLI; and its
measurement in the shapes world (reprolib.evaluation.layout, benchmarks/layout.py)."""

import importlib.util
import json
import math

import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from reprolib.attention import AttentionStore, ProbsProcessor
from reprolib.checks import InputError
from reprolib.conditioning import TextConditioning
from reprolib.generate import generate, initial_latents
from reprolib.layout import (
    BoxError,
    LayoutConfig,
    LayoutGuidance,
    Target,
    box_mask,
    layout_energy,
    normalise_boxes,
    parse_box,
    step_scale,
    targets_for,
)
from reprolib.layout.__main__ import main

PROMPT = "a red circle and a blue square"
BOXES = {"red circle": (0.0, 0.0, 0.5, 0.5)}


def _setup(pipe, steps=4):
    cond = TextConditioning(pipe)
    emb = cond.encode([PROMPT])
    pipe.scheduler.set_timesteps(steps)
    return cond, emb, initial_latents(pipe, [0], 64, 64)


def _guidance(cond, emb, boxes=BOXES, **cfg):
    return LayoutGuidance(cond, emb.tokens, boxes, LayoutConfig(**cfg), height=64, width=64)


# ----------------------------------------------------------------------------- energy on synthetic maps


def _maps(inside: float, h=4, w=4, tokens=5, token=2, heads=2):
    """(1, heads, h, w, tokens): token ``token`` puts ``inside`` of its attention in the top-left quarter."""
    a = torch.full((1, heads, h, w, tokens), 1.0 / tokens)
    col = torch.zeros(h, w)
    col += (1 - inside) / (h * w * 3 / 4)  # spread over the other three quarters
    col[: h // 2, : w // 2] = inside / (h * w / 4)
    a[..., token] = col
    return a


@pytest.mark.parametrize("inside, expected", [(1.0, 0.0), (0.0, 1.0), (0.5, 0.25), (0.9, 0.01)])
def test_energy_on_synthetic_maps(inside, expected):
    target = Target("x", [(0.0, 0.0, 0.5, 0.5)], [[2]])
    assert float(layout_energy([_maps(inside)], [target])) == pytest.approx(expected, abs=1e-6)


def test_energy_averages_maps_and_phrases():
    a, b = Target("a", [(0.0, 0.0, 0.5, 0.5)], [[2]]), Target("b", [(0.0, 0.0, 0.5, 0.5)], [[3]])
    m = _maps(1.0)  # token 2 inside; token 3 uniform: 1/4 inside → (3/4)²
    assert float(layout_energy([m], [a, b])) == pytest.approx((0 + 0.75**2) / 2, abs=1e-6)
    assert float(layout_energy([m, _maps(0.0, h=8, w=8)], [a])) == pytest.approx(0.5, abs=1e-6)
    m2 = m.clone()
    m2[..., 2] = m[..., 2] * 7  # a scale on the map does not change the energy
    assert float(layout_energy([m2], [a])) == pytest.approx(0.0, abs=1e-6)


def test_box_mask_covers_fractions_of_cells():
    m = box_mask([(0.0, 0.0, 0.5, 0.5)], 4, 4)
    assert m[:2, :2].eq(1).all() and m.sum() == 4
    m = box_mask([(0.0, 0.0, 0.3, 1.0)], 4, 4)
    assert torch.allclose(m[0], torch.tensor([1.0, 0.2, 0.0, 0.0]))
    both = box_mask([(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)], 2, 2)
    assert torch.equal(both, torch.eye(2))


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    "boxes, message",
    [
        ({"red circle": (0.0, 0.0, 1.5, 0.5)}, "not normalised"),
        ({"red circle": (0.5, 0.0, 0.2, 0.5)}, "x0 < x1"),
        ({"red circle": (0.0, 0.6, 0.5, 0.5)}, "x0 < x1 and y0 < y1"),
        ({"red circle": (0.0, 0.0, 0.5)}, "four finite numbers"),
        ({"red circle": (0.0, float("nan"), 0.5, 0.5)}, "four finite numbers"),
        ({"red circle": 0.5}, "must be"),
        ({}, "non-empty dict"),
        ([("red circle", (0, 0, 1, 1))], "non-empty dict"),
    ],
)
def test_bad_boxes_are_refused_clearly(boxes, message):
    with pytest.raises(BoxError, match=message):
        normalise_boxes(boxes)


def test_boxes_accept_one_or_many_and_phrases_must_be_in_the_prompt(sd15):
    out = normalise_boxes({"a": (0, 0, 1, 1), "b": [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]})
    assert out == {"a": [(0.0, 0.0, 1.0, 1.0)], "b": [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]}
    cond = TextConditioning(sd15)
    toks = [cond.tokenize(PROMPT)]
    (t,) = targets_for(toks, {"blue square": (0.5, 0.5, 1, 1)})
    assert len(t.positions[0]) == 2
    with pytest.raises(BoxError, match="green triangle.*does not occur"):
        targets_for(toks, {"green triangle": (0, 0, 1, 1)})
    with pytest.raises(BoxError, match="green"):
        generate(sd15, PROMPT, steps=1, boxes={"green": (0, 0, 1, 1)})


def test_parse_box():
    assert parse_box("red circle=0,0.1, 0.5,0.6") == ("red circle", (0.0, 0.1, 0.5, 0.6))
    for bad in ["red circle", "=0,0,1,1", "red circle=0,0,1", "x=a,b,c,d"]:
        with pytest.raises(BoxError, match="phrase=x0,y0,x1,y1"):
            parse_box(bad)


def test_config_is_checked():
    with pytest.raises(ValueError, match="mode"):
        LayoutConfig(mode="sideways")
    with pytest.raises(ValueError):
        LayoutConfig(forward_strength=2)


# ----------------------------------------------------------------------------- the step size


def test_step_scale_follows_the_formula_for_vp_and_ve_schedulers(sd15):
    ddim = DDIMScheduler.from_config(sd15.scheduler.config)
    ve_classes = [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler]
    if importlib.util.find_spec("scipy"):  # LMS (the official code's scheduler) needs scipy
        from diffusers import LMSDiscreteScheduler

        ve_classes.append(LMSDiscreteScheduler)
    for ve_cls in ve_classes:
        ve = ve_cls.from_config(ddim.config, timestep_spacing="leading")  # DDIM's own spacing, not Euler's default
        ddim.set_timesteps(10), ve.set_timesteps(10)
        assert ve.init_noise_sigma > 1 and ddim.init_noise_sigma == 1
        for k in (0, 4, 9):
            t = ddim.timesteps[k]
            ac = float(ddim.alphas_cumprod[int(t)])
            assert float(ve.timesteps[k]) == float(t)
            assert step_scale(ddim, t) == pytest.approx(1 - ac, rel=1e-6)
            assert step_scale(ve, ve.timesteps[k]) == pytest.approx((1 - ac) / ac, rel=1e-4)
    # σ² applied to VP latents would be 1/ᾱ too large: ≈ 70× at the first of 10 steps (t = 901)
    ac = float(ddim.alphas_cumprod[int(ddim.timesteps[0])])
    ratio = step_scale(ve, ve.timesteps[0]) / step_scale(ddim, ddim.timesteps[0])
    assert ratio == pytest.approx(1 / ac, rel=1e-4) and ratio > 50


def test_vp_and_ve_updates_are_the_same_step(sd15):
    """The DDIM update of x and the Euler update of z = x/√ᾱ move the UNet's input identically."""
    cond, emb, x = _setup(sd15, steps=4)
    ddim = sd15.scheduler
    euler = EulerDiscreteScheduler.from_config(ddim.config, timestep_spacing="leading")
    euler.set_timesteps(4)
    k = 1
    t = ddim.timesteps[k]
    ac = float(ddim.alphas_cumprod[int(t)])
    g = _guidance(cond, emb, eta=300.0, max_iters=1, loss_threshold=0.0)
    with g:
        x_new = g.before_step(k, t, x, emb)
    sd15.scheduler = euler
    g2 = _guidance(cond, emb, eta=300.0, max_iters=1, loss_threshold=0.0)
    with g2:
        z_new = g2.before_step(k, euler.timesteps[k], x / math.sqrt(ac), emb)
    assert g.history[0]["energy"] == pytest.approx(g2.history[0]["energy"], abs=1e-5)  # same function
    dx, dz = x_new - x, z_new * math.sqrt(ac) - x
    assert dx.abs().max() > 1e-3  # the update is not negligible...
    assert torch.allclose(dz, dx, atol=1e-3 * float(dx.abs().max()))  # ...and identical in the UNet's input


# ----------------------------------------------------------------------------- the hook


def test_guidance_lowers_the_energy_and_moves_the_latents(any_tiny):
    cond, emb, x = _setup(any_tiny)
    g = _guidance(cond, emb, eta=100.0, max_iters=3, loss_threshold=0.0)
    with g:
        y = g.before_step(0, any_tiny.scheduler.timesteps[0], x, emb)
    energies = [h["energy"] for h in g.history]
    assert len(energies) == 3 and all(h["updated"] for h in g.history)
    assert energies[1] < energies[0] and energies[2] < energies[1]
    assert not torch.equal(x, y) and torch.isfinite(y).all()
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in any_tiny.unet.attn_processors.values())


def test_guided_generation_differs_from_unguided(any_tiny):
    plain = generate(any_tiny, PROMPT, seed=2, steps=3, output_type="latent")
    idle = generate(
        any_tiny, PROMPT, seed=2, steps=3, output_type="latent", boxes=BOXES, layout=LayoutConfig(guidance_steps=0)
    )
    guided = generate(
        any_tiny,
        PROMPT,
        seed=2,
        steps=3,
        output_type="latent",
        boxes=BOXES,
        layout=LayoutConfig(eta=100.0, guidance_steps=2, max_iters=1, loss_threshold=0.0),
    )
    assert torch.allclose(plain, idle, atol=1e-6)
    assert (guided - plain).abs().max() > 1e-3


def test_without_reset_guidance_stops_after_the_first_threshold_hit(sd15):
    cond, emb, x = _setup(sd15, steps=4)
    runs, moved = {}, {}
    for reset in (True, False):
        g = _guidance(cond, emb, max_iters=5, loss_threshold=1.0, guidance_steps=3, reset_each_step=reset)
        with g:  # E ≤ 1 always: the first evaluation of each step is under the threshold
            moved[reset] = [
                not torch.equal(g.before_step(i, t, x, emb), x) for i, t in enumerate(sd15.scheduler.timesteps)
            ]
        runs[reset] = [h["step"] for h in g.history]
    assert runs[True] == [0, 1, 2] and moved[True] == [False] * 4  # measured afresh: never above, no update
    # the official loop: its first evaluation makes its update whatever the energy, then it stops for good
    assert runs[False] == [0] and moved[False] == [True, False, False, False]


def test_guidance_only_in_the_first_steps(sd15):
    cond, emb, x = _setup(sd15, steps=4)
    g = _guidance(cond, emb, eta=100.0, max_iters=1, loss_threshold=0.0, guidance_steps=2)
    with g:
        for i, t in enumerate(sd15.scheduler.timesteps):
            g.before_step(i, t, x, emb)
    assert [h["step"] for h in g.history] == [0, 1]


def test_nan_energy_skips_the_update_with_a_warning(sd15):
    cond, emb, x = _setup(sd15)
    g = _guidance(cond, emb, eta=100.0)
    with torch.no_grad():
        sd15.unet.get_submodule(g.layers[0]).to_k.weight.fill_(float("nan"))
    with g, pytest.warns(RuntimeWarning, match="energy is nan"):
        y = g.before_step(0, sd15.scheduler.timesteps[0], x, emb)
    assert torch.equal(x, y) and len(g.history) == 1 and not g.history[0]["updated"]


def test_nan_gradient_skips_the_update_with_a_warning(sd15, monkeypatch):
    cond, emb, x = _setup(sd15)
    g = _guidance(cond, emb, eta=100.0, loss_threshold=0.0)
    monkeypatch.setattr(g, "_gradient", lambda e, x: torch.full_like(x, float("inf")))
    with g, pytest.warns(RuntimeWarning, match="non-finite gradient"):
        y = g.before_step(0, sd15.scheduler.timesteps[0], x, emb)
    assert torch.equal(x, y) and torch.isfinite(y).all()


def test_before_step_outside_the_context_is_an_error(sd15):
    cond, emb, x = _setup(sd15)
    with pytest.raises(RuntimeError, match="context manager"):
        _guidance(cond, emb).before_step(0, sd15.scheduler.timesteps[0], x, emb)


def test_gradient_checkpointing_gives_the_same_update(sd15):
    cond, emb, x = _setup(sd15)
    t = sd15.scheduler.timesteps[0]
    out = {}
    for ckpt in (False, True):
        g = _guidance(cond, emb, eta=100.0, max_iters=2, loss_threshold=0.0, gradient_checkpointing=ckpt)
        with g:
            out[ckpt] = g.before_step(0, t, x, emb)
    assert not sd15.unet.is_gradient_checkpointing
    assert torch.allclose(out[False], out[True], atol=1e-5)


def test_forward_mode_moves_attention_into_the_box(sd15):
    cond, emb, x = _setup(sd15)
    cfg = dict(mode="forward", forward_strength=1.0, guidance_steps=1)
    g = _guidance(cond, emb, **cfg)
    store = AttentionStore(sd15.unet, g.layers, rows="cond", batch=2)
    hook = type(
        "Clock",
        (),
        {
            "before_step": lambda s, i, t, lat, c: (setattr(store, "step", i), lat)[1],
            "__enter__": lambda s: store.__enter__(),
            "__exit__": lambda s, *e: store.__exit__(),
        },
    )()
    guided = generate(
        sd15, PROMPT, seed=0, steps=2, hooks=[hook], boxes=BOXES, layout=LayoutConfig(**cfg), output_type="latent"
    )
    plain = generate(sd15, PROMPT, seed=0, steps=2, output_type="latent")
    grids = lambda s: [store.grid(n, s) for n in g.layers]  # noqa: E731
    assert float(layout_energy(grids(0), g.targets)) < 1e-6  # step 0: all inside (λ = 1)
    assert float(layout_energy(grids(1), g.targets)) > 0.1  # step 1: no longer guided
    assert (guided - plain).abs().max() > 1e-4
    assert not any(isinstance(p, ProbsProcessor) for p in sd15.unet.attn_processors.values())


def test_attention_maps_ignore_guidance_passes(sd15):
    from reprolib.maps import attention_maps

    cond, emb, _ = _setup(sd15)
    g = _guidance(cond, emb, eta=100.0, max_iters=2, loss_threshold=0.0, guidance_steps=2)
    maps = attention_maps(sd15, PROMPT, steps=3, hooks=[g])
    assert maps.steps == [0, 1, 2] and len(g.history) == 4
    assert all(m.shape[0] == m.shape[1] for per in maps.maps.values() for m in per.values())


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_image_overlays_and_settings(tmp_path):
    out = tmp_path / "run"
    rc = main(
        [
            "--model",
            "tiny-sd15",
            "--prompt",
            PROMPT,
            "--box",
            "red circle=0,0,0.5,0.5",
            "--box",
            "blue square=0.5,0.5,1,1",
            "--seed",
            "445",
            "--steps",
            "2",
            "--eta",
            "50",
            "--guidance-steps",
            "1",
            "--max-iters",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    for name in ("image.png", "attention_red_circle.png", "attention_blue_square.png", "attention_grid.png"):
        assert (out / name).stat().st_size > 0
    s = json.loads((out / "settings.json").read_text())
    assert s["seed"] == 445 and s["guidance"] and s["config"]["eta"] == 50
    assert s["boxes"]["red circle"] == [[0.0, 0.0, 0.5, 0.5]]
    assert len(s["energy_by_step"]) == 2 and 0 <= min(s["energy_by_step"]) <= 1
    assert [h["step"] for h in s["guidance_history"]] == [0, 0]


def test_cli_refuses_bad_boxes(tmp_path, capsys):
    rc = main(["--model", "tiny-sd15", "--prompt", PROMPT, "--box", "green triangle=0,0,1,1", "--out", str(tmp_path)])
    assert rc == 2 and "green triangle" in capsys.readouterr().err
    assert not (tmp_path / "image.png").exists()


# ----------------------------------------------------------------------------- measured in-box table (shapes world)


def _circle_scene(cx, cy, size=8.0):
    from reprolib.shapes import world

    return world.render((world.Obj("circle", "red", size, cx, cy), world.Obj("square", "blue", 6.0, 50.0, 50.0)))


def test_score_measures_the_object_in_its_box_with_the_ruler():
    from reprolib.evaluation.layout import QUADRANTS, score

    img = _circle_scene(16.0, 16.0)  # red circle centred in the top-left quadrant, blue square bottom-right
    s = score(img, {"red circle": QUADRANTS["top-left"], "blue square": QUADRANTS["top-left"]})
    assert s["red circle"] == pytest.approx(1.0) and s["blue square"] == pytest.approx(0.0)
    half = score(_circle_scene(32.0, 16.0), {"red circle": QUADRANTS["top-left"]})["red circle"]
    assert 0.4 < half < 0.6  # straddles the quadrant's right edge
    assert math.isnan(score(img, {"green triangle": (0, 0, 1, 1)})["green triangle"])  # no such object


def test_cases_are_checked():
    from reprolib.evaluation.layout import Case

    with pytest.raises(ValueError, match="one colour"):
        Case("x", "a circle", {"circle": (0, 0, 0.5, 0.5)})
    with pytest.raises(BoxError, match="not normalised"):
        Case("x", "a red circle", {"red circle": (0, 0, 2, 0.5)})
    with pytest.raises(ValueError, match="one box per phrase"):
        Case("x", "a red circle", {"red circle": [(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)]})


def test_layout_table_summary_counts_found_objects_and_times_per_image():
    from reprolib.evaluation.layout import LayoutTable, Run

    nan = float("nan")
    runs = [
        Run("unguided", "c", 0, "red circle", 0.2, 1.0),
        Run("unguided", "c", 1, "red circle", nan, 3.0),
        Run("backward", "c", 0, "red circle", 0.9, 4.0),
        Run("backward", "c", 1, "red circle", 0.7, 8.0),
    ]
    s = LayoutTable(runs, ["unguided", "backward"], ["c"], [0, 1]).summary()
    assert s["unguided"]["in_box"] == pytest.approx(0.2) and s["unguided"]["found"] == 0.5
    assert s["unguided"]["in_box_all"] == pytest.approx(0.1)
    assert s["backward"]["in_box"] == pytest.approx(0.8) and s["backward"]["found"] == 1.0
    assert s["backward"]["ratio"] == pytest.approx(6.0 / 2.0)


def test_layout_probe_returns_a_table_per_method_case_seed_and_phrase(sd15):
    from reprolib.evaluation.layout import DEFAULT_CASES, layout_probe, methods

    cases = [c for c in DEFAULT_CASES if c.name in ("circle top-left", "pair: both boxed")]
    configs = {
        k: v for k, v in methods(eta=50.0, max_iters=1, guidance_steps=1).items() if k in ("unguided", "backward")
    }
    table = layout_probe(sd15, cases, seeds=[0, 1], configs=configs, steps=2, warmup=False, keep_images=True)
    assert table.methods == ["unguided", "backward"] and table.cases == [c.name for c in cases]
    assert len(table.runs) == 2 * 2 * (1 + 2)  # methods × seeds × boxed phrases over the cases
    assert len(table.images) == 2 * 2 * 2
    # the unguided image does not depend on the boxes: one generation per prompt and seed
    assert table.images[("unguided", cases[0].name, 0)] is not table.images[("backward", cases[0].name, 0)]
    for r in table.runs:
        assert r.seconds > 0 and (math.isnan(r.in_box) or 0.0 <= r.in_box <= 1.0)
    # one guided step, one iteration: one energy evaluation per guided image, none for the sampler's own passes
    assert table.summary()["unguided"]["passes"] == 0 and table.summary()["backward"]["passes"] == 1
    assert "energy passes" in table.format()
    for row in table.summary().values():
        assert 0.0 <= row["found"] <= 1.0 and row["seconds"] > 0
    assert "× unguided" in table.format() and "pair: both boxed" in table.format()
    json.dumps(table.as_dict())


def test_benchmark_script_runs_on_a_tiny_pipeline(tmp_path, capsys, bench_script):
    bench = bench_script("layout")
    out = bench.main(
        [
            "--model",
            "tiny-sd15",
            "--seeds",
            "2",
            "--steps",
            "2",
            "--cases",
            "top-left,both",
            "--max-iters",
            "1",
            "--guidance-steps",
            "1",
            "--layers",
            "mid,up.1",
            "--ae-seeds",
            "1",
            "--ae-no-refine",
            "--json",
            str(tmp_path / "layout.json"),
        ]
    )
    text = capsys.readouterr().out
    for method in ("unguided", "backward", "backward, never reset", "forward", "Attend-and-Excite"):
        assert method in text
    saved = json.loads((tmp_path / "layout.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["summary"]) == set(out["summary"])
    assert len(saved["runs"]) == 4 * 2 * 3
    assert saved["attend_and_excite"]["ratio"] > 0 and saved["attend_and_excite"]["token_indices"] == [3, 7]
    with pytest.raises(InputError, match="--json: .*layout.json exists already; .* pass --overwrite"):
        bench.main(["--model", "tiny-sd15", "--json", str(tmp_path / "layout.json")])  # refused before any work
    assert json.loads((tmp_path / "layout.json").read_text()) == saved


def test_batched_guidance_equals_one_image_at_a_time(sd15):
    """Each image in a batch is guided by its own energy, as if it were generated alone."""
    from reprolib.generate import generate
    from reprolib.layout import LayoutConfig

    cfg = LayoutConfig(eta=5.0, guidance_steps=2, max_iters=2)
    boxes = {"red circle": (0.0, 0.0, 0.5, 0.5)}
    kw = dict(steps=3, boxes=boxes, layout=cfg, output_type="latent")
    both = generate(sd15, "a red circle", seed=[1, 2], **kw)
    for j, s in enumerate((1, 2)):
        alone = generate(sd15, "a red circle", seed=s, **kw)
        torch.testing.assert_close(both[j : j + 1], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(both, generate(sd15, "a red circle", seed=[1, 2], steps=3, output_type="latent"))


def test_boxes_and_edits_in_one_call(any_tiny):
    """Layout guidance and attribute edits compose in one generate() call, on SD, SD 2.1 and SDXL."""
    from reprolib.conditioning import TextConditioning
    from reprolib.delta import Delta
    from reprolib.generate import generate
    from reprolib.layout import LayoutConfig

    pipe = any_tiny
    delta = Delta({k: torch.ones(d) for k, d in TextConditioning(pipe).dims.items()})
    kw = dict(seed=0, steps=3, output_type="latent", layout=LayoutConfig(eta=5.0, guidance_steps=2, max_iters=1))
    boxes = {"red circle": [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)]}  # a phrase may have several boxes
    both = generate(pipe, "a red circle and a blue square", boxes=boxes, edits=[(delta, "circle", 2.0)], delay=0, **kw)
    only_boxes = generate(pipe, "a red circle and a blue square", boxes=boxes, **kw)
    only_edit = generate(pipe, "a red circle and a blue square", edits=[(delta, "circle", 2.0)], delay=0, **kw)
    assert torch.isfinite(both).all()
    assert not torch.allclose(both, only_boxes) and not torch.allclose(both, only_edit)
