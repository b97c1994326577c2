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

    grown = generate(shapes_pipe, CAPTION, inversion=inv, edits=[Edit(size, "circle", 1.5)], output_type="latent")
    mask = spy.made[-1].masks[-1]
    assert 0 < mask.mean() < 0.5  # the circle's neighbourhood, not the whole picture
    keep = (mask == 0).expand_as(grown)
    torch.testing.assert_close(grown[keep], x0[keep])  # exactly the picture's latents there

    images = {}
    for blend in (False, True):
        for a in (0.0, 1.5):
            e = [Edit(size, "circle", a)]
            images[blend, a] = np.asarray(generate(shapes_pipe, CAPTION, inversion=inv, edits=e, local_blend=blend))
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
