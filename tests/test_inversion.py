"""Inversion: real pictures back into the sampler (tiny SD 1.5 / SD 2.1 / SDXL, and the shapes world)."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from PIL import Image

from reprolib import checks, inversion
from reprolib.checks import InputError, InputTypeError
from reprolib.conditioning import Embeddings
from reprolib.contrastive import contrastive_delta
from reprolib.edits import Edit
from reprolib.generate import generate, prompt_at
from reprolib.inversion import Inversion, InversionError, encode_image, invert, load_image
from reprolib.protocols import StartingPoint
from reprolib.shapes import measure, world
from reprolib.tiny import tiny_pipeline
from reprolib.widgets import attribute_slider


def picture(h=64, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[h // 4 : h // 2, w // 4 : w // 2] = rng.integers(0, 255, 3)
    return a


def rel_error(pipe, inv: Inversion) -> float:
    back = generate(pipe, inv.prompt, inversion=inv, output_type="latent").float()
    x0 = encode_image(pipe, inv.image).float()
    return float((back - x0).norm() / x0.norm())


def test_an_inversion_is_a_starting_point(sd15):
    inv = invert(sd15, picture(), "a red square", steps=4, verify=False)
    assert isinstance(inv, StartingPoint)


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_exact_inversion_gives_the_picture_back_on_every_family(family):
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    inv = invert(pipe, picture(), "a red square", steps=6, guidance_scale=5.0)
    assert inv.error < 2e-3  # measured by invert itself; float rounding grows through a random UNet at CFG 5
    assert rel_error(pipe, inv) < 2e-3
    plain = invert(pipe, picture(), "a red square", steps=6, guidance_scale=5.0, method="ddim")
    assert plain.residuals is None and plain.error > 10 * inv.error  # plain DDIM drifts under guidance


def test_sdxl_with_its_own_euler_scheduler_inverts_on_ddim_at_the_pictures_size(sdxl):
    sdxl.scheduler = EulerDiscreteScheduler.from_config(sdxl.scheduler.config)
    inv = invert(sdxl, picture(48, 64), "a red square", steps=5, height=48, width=64)
    f = sdxl.vae_scale_factor
    assert (inv.height, inv.width) == (48, 64) and inv.latents.shape[-2:] == (48 // f, 64 // f)
    assert inv.error < 2e-3  # time ids (48, 64, 0, 0, 48, 64) at both ends: the same sampler
    out = generate(sdxl, "a red square", inversion=inv, output_type="np")
    assert out.shape == (48, 64, 3)


def test_sdxl_fp16_vae_is_upcast_for_encoding(sdxl):
    sdxl.vae.config.force_upcast = True
    sdxl.vae.to(torch.float16)
    lat = encode_image(sdxl, Image.fromarray(picture()))
    assert lat.dtype == sdxl.unet.dtype and torch.isfinite(lat).all()
    assert sdxl.vae.dtype == torch.float16  # given back as it was


def test_pictures_in_every_form(sd15, tmp_path):
    rgb = picture()
    grey = Image.fromarray(rgb).convert("L")
    rgba = Image.fromarray(rgb).convert("RGBA")
    path = tmp_path / "p.png"
    Image.fromarray(rgb).save(path)
    for img in (rgb, rgb / 255.0, grey, rgba, str(path), path, np.asarray(grey)):
        out = load_image(img, 64, 64)
        assert out.mode == "RGB" and out.size == (64, 64)
    assert np.array_equal(np.asarray(load_image(path, 64, 64)), rgb)


def test_another_size_is_cropped_and_resized_with_a_warning():
    with pytest.warns(UserWarning, match=r"100×50.*centre-cropped.*64×64"):
        out = load_image(picture(50, 100), 64, 64)
    assert out.size == (64, 64)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.full((4, 4, 3), np.nan), "NaN"),
        (Image.new("RGB", (0, 0)), "empty"),
        ("no/such/file.png", "no such file"),
        (42, "give a path"),
    ],
)
def test_bad_pictures_are_named(bad, match):
    with pytest.raises(InversionError, match=match):
        load_image(bad, 64, 64)


def test_a_file_that_is_not_a_picture(tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("not a picture")
    with pytest.raises(InversionError, match="not a picture"):
        load_image(f, 64, 64)


def test_another_pipeline_or_step_count_is_refused(sd15):
    inv = invert(sd15, picture(), "a red square", steps=4, verify=False)
    with pytest.raises(InversionError, match="steps=5.*4 steps"):
        generate(sd15, "a red square", inversion=inv, steps=5)
    other = tiny_pipeline("sd15", seed=1)
    with pytest.raises(InversionError, match="another pipeline"):
        generate(other, "a red square", inversion=inv)
    with pytest.raises(ValueError, match="latents or inversion"):
        generate(sd15, "a red square", inversion=inv, latents=inv.latents)


@pytest.mark.parametrize("kw, match", [({"method": "renoise"}, "method"), ({"iterations": -1}, "iterations")])
def test_bad_options(sd15, kw, match):
    with pytest.raises(InversionError, match=match):
        invert(sd15, picture(), "a red square", steps=4, **kw)


def test_shapes_world_scene_inverted_reconstructed_and_edited(shapes_pipe):
    # chapter 05's scene. (Its mirror image, circle at (20, 24) and square at (44, 40), is one v2 gets wrong: at
    # α = −1 the shrunk circle comes out yellow, a failure of the kind the README's inversion table counts.)
    scene = world.Scene((world.Obj("circle", "red", 8.0, 20, 40), world.Obj("square", "blue", 8.0, 44, 20)), "")
    caption = "a red circle and a blue square"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caption describes the picture: no warning
        inv = invert(shapes_pipe, world.render(scene), caption)
    assert inv.error < 1e-3
    size = contrastive_delta(shapes_pipe, "shapes/size")
    areas = []
    for a in (-1.0, 0.0, 1.5):
        img = generate(shapes_pipe, caption, inversion=inv, edits=[Edit(size, "circle", a)])
        areas.append(measure.find(measure.measure(np.asarray(img)), "red").area)
    assert areas[0] < areas[1] < areas[2]


def test_the_edit_fades_in_over_the_steps_after_the_delay():
    plain, edited = Embeddings({"clip": torch.zeros(1, 3, 2)}), Embeddings({"clip": torch.ones(1, 3, 2)})
    stages = [(2, edited)]  # the edits begin at step 2
    weights = [float(prompt_at(i, plain, stages, fade=3).states["clip"].mean()) for i in range(7)]
    assert weights == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert [prompt_at(i, plain, stages, 0) is edited for i in range(4)] == [False, False, True, True]  # the switch


def test_fading_the_edit_in_shrinks_the_subject_step_by_step(shapes_pipe):
    # benchmarks/inversion.py's edit scene 24 (rounded), with the paper's reach (keys and values), which the
    # fade-in was chosen for. On v1, switched on at once, α = −1 left the triangle bigger than at α = 0 (the old
    # one was not cleared away); v2 shrinks it either way, and the fade-in still shrinks it at every step
    caption = "a red triangle and a green circle"
    triangle = world.Obj("triangle", "red", 7.95, 47.74, 10.48)
    circle = world.Obj("circle", "green", 9.06, 41.43, 41.67)
    scene = world.Scene((triangle, circle), "")
    inv = invert(shapes_pipe, world.render(scene), caption, verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    areas = {}
    for fade in (0.0, None):
        for a in (-1.0, -0.5, 0.0):
            img = generate(
                shapes_pipe, caption, inversion=inv, edits=[Edit(size, "red triangle", a, "keys+values")], fade_in=fade
            )
            areas[fade, a] = measure.find(measure.measure(np.asarray(img)), "red").area
    assert areas[None, -1.0] != areas[0.0, -1.0]  # the fade changes the frame: it is not the switch
    assert areas[None, -1.0] < areas[None, -0.5] < areas[None, 0.0]


@pytest.mark.parametrize("fade, error", [(-0.1, InputError), (1.5, InputError), ("0.2", InputTypeError)])
def test_a_bad_fade_in_is_named(shapes_pipe, fade, error):
    with pytest.raises(error, match="fade_in"):
        generate(shapes_pipe, "a red circle", steps=2, fade_in=fade)


def test_a_prompt_that_does_not_describe_the_picture_is_allowed_and_its_error_reported(shapes_pipe, monkeypatch):
    scene = world.Scene((world.Obj("circle", "red", 9.0, 32, 32),), "")
    exact = invert(shapes_pipe, world.render(scene), "a big green triangle")
    assert exact.error < 1e-3  # the exact method gives any picture back, whatever the prompt
    plain = invert(shapes_pipe, world.render(scene), "a big green triangle", method="ddim")
    assert plain.error > 10 * exact.error
    monkeypatch.setattr(inversion, "LARGE_ERROR", plain.error / 2)
    with pytest.warns(UserWarning, match=r"relative latent error of \d\.\d\d.*'a big green triangle'"):
        invert(shapes_pipe, world.render(scene), "a big green triangle", method="ddim")


def test_the_slider_works_on_an_inverted_picture(shapes_pipe):
    scene = world.Scene((world.Obj("circle", "red", 8.0, 32, 32),), "")
    inv = invert(shapes_pipe, world.render(scene), "a red circle", verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    slider = attribute_slider(shapes_pipe, "a red circle", [(size, "circle", "size")], inversion=inv)
    for a in (0.0, 1.0):
        want = generate(shapes_pipe, "a red circle", inversion=inv, edits=[Edit(size, "circle", a)], output_type="np")
        assert np.abs(np.asarray(slider.render(a), float) - want * 255).max() <= 1
    assert slider.prefix() is not None  # the unedited first steps were shared


def test_settings_are_chosen_on_a_draw_other_than_the_bars(bench_script, monkeypatch, capsys):
    """``--edit-seed`` draws other shrinkable two-object scenes (a validation set); the bar's draw is the default."""
    from reprolib.evaluation import inversion as probe
    from reprolib.shapes import world

    bar, other = probe.edit_scenes(8), probe.edit_scenes(8, seed=2027)
    assert bar == probe.edit_scenes(8, seed=probe.EDIT_SEED) and not set(bar) & set(other)
    assert all(len(s.objects) == 2 and s.objects[0].size >= world.SMALL_BELOW for s in other)
    bench = bench_script("inversion")
    seen = []
    monkeypatch.setattr(bench, "edit_table", lambda pipe, scenes, *a: seen.append(scenes) or {})
    monkeypatch.setattr(bench.reprolib, "load_pipeline", lambda model: None)
    bench.main(["--scenes", "0", "--edits", "8", "--edit-iterations", "0", "--edit-seed", "2027"])
    bench.main(["--scenes", "0", "--edits", "8", "--edit-iterations", "0"])
    assert seen == [other, bar] and "validation seed 2027" in capsys.readouterr().out
    rc = checks.run_cli(bench.main, ["--scenes", "0", "--edit-seed", "-1"], "prog")  # before any pipeline loads
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--edit-seed" in err[0] and len(seen) == 2, err
