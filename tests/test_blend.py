"""Local blend: edits of an inverted picture keep the picture outside the edited words' attention."""

import numpy as np
import pytest
import torch

from reprolib.blend import LocalBlend
from reprolib.checks import InputError
from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.delta import Delta
from reprolib.edits import Edit
from reprolib.evaluation.inversion import held_out_scenes
from reprolib.evaluation.specificity import subject_pattern
from reprolib.generate import generate
from reprolib.inversion import encode_image, invert
from reprolib.shapes import measure, world


class Spy:
    """Collects every LocalBlend that generate makes (to read its masks)."""

    def __init__(self, monkeypatch):
        self.made = []
        init = LocalBlend.__init__

        def spy(blend, *a, **k):
            init(blend, *a, **k)
            self.made.append(blend)

        monkeypatch.setattr(LocalBlend, "__init__", spy)


SCENE = world.Scene((world.Obj("circle", "red", 7.0, 20, 22), world.Obj("square", "blue", 7.0, 46, 44)), "")
CAPTION = "a red circle and a blue square"


def test_outside_the_mask_the_picture_is_kept_and_the_subject_still_grows(shapes_pipe, monkeypatch):
    spy = Spy(monkeypatch)
    inv = invert(shapes_pipe, world.render(SCENE), CAPTION, verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    x0 = encode_image(shapes_pipe, inv.image)
    torch.testing.assert_close(inv.path[-1], x0)
    assert len(inv.path) == inv.steps + 1 and torch.equal(inv.path[0], inv.latents)

    # the blend alone: the edit switched on at once (no fade-in) and without the anchor
    grown = generate(
        shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "circle", 1.5)], output_type="latent",
        local_blend=True, fade_in=0.0,
    )  # fmt: skip
    mask = spy.made[-1].masks[-1]
    assert 0 < mask.mean() < 0.5  # the circle's neighbourhood, not the whole picture
    keep = (mask == 0).expand_as(grown)
    torch.testing.assert_close(grown[keep], x0[keep])  # exactly the picture's latents there

    images = {}
    for blend in (False, True):
        for a in (0.0, 1.5):
            e = [Edit(size, "circle", a)]
            images[blend, a] = np.asarray(
                generate(shapes_pipe, CAPTION, inversion=inv, edits=e, local_blend=blend, fade_in=0.0)
            )
    for blend in (False, True):
        before, after = (measure.find(measure.measure(images[blend, a]), "red").area for a in (0.0, 1.5))
        assert after > before + 20  # the edit still does what it says
    # pixels a cell or more from the mask; they still move a little: the VAE decoder's mid-block attention
    # spreads every latent over the whole picture
    wide = torch.nn.functional.max_pool2d(mask, 3, stride=1, padding=1)[0, 0].numpy() > 0
    away = ~np.repeat(np.repeat(wide, 4, 0), 4, 1)
    moved = {b: np.abs(images[b, 1.5].astype(float) - images[b, 0.0])[away].mean() for b in (False, True)}
    assert moved[True] < 0.75 * moved[False]


def test_no_edit_gives_the_picture_back_with_the_blend_on(shapes_pipe):
    inv = invert(shapes_pipe, world.render(SCENE), CAPTION, verify=False)
    back = generate(shapes_pipe, CAPTION, inversion=inv, local_blend=True, output_type="latent")
    x0 = encode_image(shapes_pipe, inv.image)
    assert float((back - x0).norm() / x0.norm()) < 1e-3


def test_sdxl_at_a_non_square_size(sdxl, monkeypatch):
    spy = Spy(monkeypatch)
    img = np.zeros((48, 64, 3), np.uint8)
    img[8:24, 8:32] = (200, 30, 30)
    inv = invert(sdxl, img, "a red square", steps=5, height=48, width=64, verify=False)
    g = torch.Generator().manual_seed(0)
    d = Delta({k: torch.randn(n, generator=g) for k, n in TextConditioning(sdxl).dims.items()}, {})
    out = generate(sdxl, "a red square", inversion=inv, edits=[Edit(d, "square", 3.0)], output_type="latent")
    mask = spy.made[-1].masks[-1]
    assert mask.shape[-2:] == out.shape[-2:] == (48 // sdxl.vae_scale_factor, 64 // sdxl.vae_scale_factor)
    keep = (mask == 0).expand_as(out)
    torch.testing.assert_close(out[keep], inv.path[-1][keep])
    # the anchor's extra UNet pass takes SDXL's added conditions at the picture's own size
    out = generate(
        sdxl,
        "a red square",
        inversion=inv,
        edits=[Edit(d, "square", 3.0)],
        output_type="latent",
        local_blend="anchored",
    )
    assert spy.made[-1].anchor.shape[-2:] == out.shape[-2:]


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"local_blend": True}, r"local_blend=True .*inversion=reprolib.invert"),
        ({"local_blend": 0.5}, r"local_blend=0.5 .*inversion=reprolib.invert"),
    ],
)
def test_a_blend_needs_an_inversion(sd15, kw, match):
    with pytest.raises(InputError, match=match):
        generate(sd15, "a red square", steps=2, **kw)


@pytest.mark.parametrize("value", [0.0, 1.0, 2, float("nan"), "on"])
def test_a_bad_threshold_is_named(sd15, value):
    inv = invert(sd15, np.zeros((64, 64, 3), np.uint8), "a red square", steps=2, verify=False)
    with pytest.raises(InputError, match="local_blend"):
        generate(sd15, "a red square", inversion=inv, local_blend=value)


def _first_masks(pipe, scene, pattern, monkeypatch, **blend_kwargs):
    """The first edited step's blend mask (no anchor, no fade-in) for a size edit of ``pattern`` at α 1.5,
    LocalBlend given ``blend_kwargs``."""
    made = []
    init = LocalBlend.__init__

    def spy(blend, *a, **k):
        init(blend, *a, **{**k, **blend_kwargs})
        made.append(blend)

    monkeypatch.setattr(LocalBlend, "__init__", spy)
    inv = invert(pipe, world.render(scene), scene.caption, verify=False)
    size = contrastive_delta(pipe, "shapes/size")
    e = [Edit(size, pattern, 1.5)]
    generate(pipe, scene.caption, inversion=inv, edits=e, output_type="latent", local_blend=True, fade_in=0.0)
    return made[-1], made[-1].masks[0][0, 0].numpy() > 0


def _cells(scene, obj) -> np.ndarray:
    """The 16×16 latent cells an object of a rendered scene covers."""
    mask = measure.find(measure.measure(np.asarray(world.render(scene))), obj.colour).mask
    return mask.reshape(16, 4, 16, 4).any((1, 3))


def test_cells_another_word_attends_more_are_kept(shapes_pipe, monkeypatch):
    # the shapes model binds "circle" to both circles of this held-out scene: the edited noun's mask
    # covers part of the green circle unless the other words may claim their cells
    scene = held_out_scenes(32, seed=4_711, n_objects=2)[12]
    assert scene.caption == "a small blue circle and a green circle"
    word = subject_pattern("blue", "circle")
    blend, new = _first_masks(shapes_pipe, scene, word, monkeypatch)
    assert blend.others[0] and not set(blend.others[0]) & set(blend.positions[0])
    _, old = _first_masks(shapes_pipe, scene, word, monkeypatch, others=None)
    assert (new <= old).all()  # the same step's maps: others only take cells away
    green = _cells(scene, scene.objects[1])
    assert new[green].mean() < old[green].mean()


def test_anchored_blend_edits_only_near_the_subject(shapes_pipe, monkeypatch):
    spy = Spy(monkeypatch)
    inv = invert(shapes_pipe, world.render(SCENE), CAPTION, verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    generate(shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "circle", 1.5)])  # anchored: the default
    blend = spy.made[-1]
    assert blend.anchor is not None
    anchor = blend.anchor[0, 0].numpy()
    circle = _cells(SCENE, SCENE.objects[0])
    square = _cells(SCENE, SCENE.objects[1])
    assert anchor[circle].all() and not anchor[square].any() and anchor.mean() < 0.5
    grown = torch.nn.functional.max_pool2d(torch.tensor(anchor, dtype=torch.float)[None, None], 3, 1, 1)[0, 0] > 0
    for m in blend.masks:
        assert (m[0, 0].numpy() > 0)[~grown.numpy()].sum() == 0  # within a cell of the anchor (the mask's dilation)
    with pytest.raises(InputError, match="local_blend .*'anchored'"):
        generate(shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "circle", 1.5)], local_blend="anchor")


def test_a_sliders_frames_read_the_anchor_once(shapes_pipe, monkeypatch):
    # the anchor depends on the picture, the prompt and the edited words, not on α: one UNet pass per subject
    spy = Spy(monkeypatch)
    inv = invert(shapes_pipe, world.render(SCENE), CAPTION, verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    for alpha in (-1.0, 0.5, 1.5):
        generate(shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "circle", alpha)])
    assert len(inv.anchors) == 1 and spy.made[0].anchor is spy.made[-1].anchor  # the same tensor: not read again
    generate(shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "square", 1.0)])
    assert len(inv.anchors) == 2
    assert not torch.equal(spy.made[-1].anchor, spy.made[0].anchor)  # the square's own place


@pytest.mark.parametrize("mode", [True, "anchored"])
def test_a_batch_of_prompts_blends_each_image_by_its_own_words(shapes_pipe, monkeypatch, mode):
    # "circle" is one token of the first prompt and two of the second: each image's edited and other words
    # are its own, and its mask is the one it would have alone
    spy = Spy(monkeypatch)
    inv = invert(shapes_pipe, world.render(SCENE), CAPTION, verify=False)
    size = contrastive_delta(shapes_pipe, "shapes/size")
    prompts = [CAPTION, "a red circle and a blue circle"]
    e = [Edit(size, "circle", 1.5)]
    generate(shapes_pipe, prompts, inversion=inv, edits=e, local_blend=mode, output_type="latent")
    both = spy.made[-1]
    assert [len(p) for p in both.positions] == [1, 2]
    generate(shapes_pipe, prompts[1], inversion=inv, edits=e, local_blend=mode, output_type="latent")
    alone = spy.made[-1]
    torch.testing.assert_close(both.masks[0][1:], alone.masks[0])
