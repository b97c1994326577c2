"""attribute_slider: render(alphas) gives images, frames are cached, moving a slider re-renders."""

import numpy as np
import pytest
from PIL import Image

from reprolib.contrastive import contrastive_delta
from reprolib.delta import DeltaMismatch
from reprolib.edits import Edit
from reprolib.generate import generate
from reprolib.tokens import SpanError
from reprolib.widgets import Attribute, AttributeSlider, attribute_slider

PROMPT = "a red circle and a blue square"


@pytest.fixture
def deltas(sd15):
    return contrastive_delta(sd15, "shapes/size"), contrastive_delta(sd15, "shapes/colour")


def slider(pipe, spec, **kw):
    kw.setdefault("values", (-4.0, 4.0, 1.0))
    kw.setdefault("prefetch", 0)
    kw.setdefault("steps", 2)
    kw.setdefault("delay", 0.0)
    return attribute_slider(pipe, PROMPT, spec, seed=1, **kw)


def test_render_returns_images_and_alpha_matters(sd15, deltas):
    s = slider(sd15, [(deltas[0], "circle", "size")])
    a, b = s.render((0.0,)), s.render((4.0,))
    assert isinstance(a, Image.Image) and a.size == (64, 64)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert s.render(0.0) is a  # a bare number works for one attribute


def test_cache_hits_on_repeat_and_lru_eviction(sd15, deltas):
    s = slider(sd15, [(deltas[0], "circle", "size"), (deltas[1], "square", "colour")], cache_size=2)
    first = s.render((1.0, 0.0))
    assert (s.cache_info().hits, s.cache_info().misses) == (0, 1)
    assert s.render((1.0, 0.0)) is first
    assert s.render((0.1 + 0.9, 0.0)) is first  # float noise does not defeat the cache
    assert (s.cache_info().hits, s.cache_info().misses) == (2, 1)
    s.render((2.0, 0.0))
    s.render((1.0, 0.0))  # still cached: refreshes it
    s.render((3.0, 0.0))  # evicts (2, 0), the least recently used
    assert s.cache_info().size == 2
    misses = s.cache_info().misses
    s.render((1.0, 0.0))
    assert s.cache_info().misses == misses
    s.render((2.0, 0.0))
    assert s.cache_info().misses == misses + 1
    with pytest.raises(ValueError, match="one α per attribute"):
        s.render((1.0,))


def test_slider_change_triggers_render(sd15, deltas):
    s = slider(sd15, [(deltas[0], "circle", "size"), (deltas[1], "square")])
    w = s.widget
    assert len(s.sliders) == 2 and s.sliders[0].description == "size" and s.sliders[1].description == "shapes/colour"
    assert s.cache_info().misses == 1  # the α = 0 frame shown at once
    before = s.image.value
    s.sliders[0].value = 3.0
    assert s.wait(60)
    assert s.cache_info().misses == 2 and s.image.value != before
    s.sliders[0].value = 0.0  # back to a frame seen before: no new render
    assert s.wait(60)
    assert s.cache_info().misses == 2 and s.cache_info().hits == 1 and s.image.value == before
    assert s.image in w.children


def test_bad_spec_fails_before_any_render(sd15, sdxl, deltas):
    with pytest.raises(SpanError, match="triangle"):
        slider(sd15, [(deltas[0], "triangle", "size")])
    with pytest.raises(DeltaMismatch):
        slider(sdxl, [(deltas[0], "circle")])
    with pytest.raises(TypeError, match="delta, pattern"):
        slider(sd15, [("circle", deltas[0])])
    with pytest.raises(ValueError, match="min < max"):
        slider(sd15, (deltas[0], "circle"), values=(1.0, -1.0, 0.5))
    assert isinstance(slider(sd15, (deltas[0], "circle")), AttributeSlider)  # one bare tuple is fine


def test_frames_share_the_unedited_first_steps(sd15, deltas):
    """With delay, the first steps run once for all frames, and every frame equals plain generate()."""
    calls = []
    handle = sd15.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        s = attribute_slider(sd15, PROMPT, [(deltas[0], "circle", "size")], seed=1, steps=5, delay=0.4)
        first = s.render(2.0)
        assert len(calls) == 5  # 2 shared + 3 edited
        second = s.render(-2.0)
        assert len(calls) == 8  # only the 3 edited steps
    finally:
        handle.remove()
    for alpha, frame in ((2.0, first), (-2.0, second)):
        ref = generate(sd15, PROMPT, seed=1, steps=5, delay=0.4, edits=[(deltas[0], "circle", alpha)])
        np.testing.assert_array_equal(np.asarray(frame), np.asarray(ref))


def test_background_renders_only_the_newest_value(sd15, deltas):
    """#16: three quick moves show the last value first; the frame under way for a passed value is dropped."""
    s = slider(sd15, [(deltas[0], "circle", "size")])
    assert s.widget is not None  # built: the slider shows its first frame
    shown = []
    s.image.observe(lambda ch: shown.append(ch["new"]), names="value")
    with s._compute:  # the thread is held at its first frame while the reader moves on twice
        s.sliders[0].value = 1.0
        s.sliders[0].value = 2.0
        s.sliders[0].value = 3.0
    assert s.wait(60)
    assert len(shown) == 1 and s.shown == (3.0,)
    assert s._abandoned <= 1 and (2.0,) not in s._cache  # 1 maybe started, then abandoned; 2 never started
    ref = slider(sd15, [(deltas[0], "circle", "size")], background=False).render(3.0)
    np.testing.assert_array_equal(np.asarray(s.render(3.0)), np.asarray(ref))


def test_neighbours_are_rendered_ahead_and_identical(sd15, deltas):
    from reprolib.generate import generate

    s = slider(sd15, [(deltas[0], "circle", "size")], prefetch=2, steps=5, delay=0.4)
    assert s.neighbours((0.0,)) == [(1.0,), (-1.0,), (2.0,), (-2.0,)]
    assert s.neighbours((4.0,)) == [(3.0,), (2.0,)]  # not past the slider's end
    assert s.widget is not None  # built: the slider shows its first frame
    s.sliders[0].value = 1.0
    assert s.wait(60)
    assert {(0.0,), (1.0,), (2.0,), (3.0,), (-1.0,)} <= set(s._cache)  # 0 and 1 shown, 2 3 0 -1 ahead
    hits, misses = s.cache_info().hits, s.cache_info().misses
    s.sliders[0].value = 2.0  # the next step: already rendered, shown from the cache
    assert s.wait(60) and s.shown == (2.0,) and s.cache_info().hits == hits + 1
    assert s.cache_info().misses == misses + 1 and (4.0,) in s._cache  # only 4, the one new neighbour
    for alpha in (2.0, 3.0, -1.0):  # frames rendered ahead (with the stop hook) equal plain generate()
        ref = generate(sd15, PROMPT, seed=1, steps=5, delay=0.4, edits=[(deltas[0], "circle", alpha)])
        np.testing.assert_array_equal(np.asarray(s.render(alpha)), np.asarray(ref))
    with pytest.raises(ValueError, match="prefetch"):
        slider(sd15, [(deltas[0], "circle")], prefetch=-1)


def test_a_static_view_gets_the_frame_as_a_picture(sd15, deltas):
    """#18: where the widget cannot be shown (a notebook not trusted yet), JupyterLab shows the PNG instead."""
    import base64
    import io

    s = slider(sd15, [(deltas[0], "circle", "size")])
    bundle = s._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == s.widget.model_id
    png = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert png.size == (256, 256)
    small = np.asarray(png)[::4, ::4]  # enlarged 4× (nearest): every 4th pixel is the frame
    np.testing.assert_array_equal(small, np.asarray(s.render(0.0).convert(png.mode)))


def test_each_attribute_may_start_at_its_own_step(sd15, deltas):
    """Attribute.delay is Edit.delay: the shared first steps end where the earliest attribute starts, and every
    frame equals generate() with the same Edits (the colour from step 2, the size at generate's 0.6)."""
    size, colour = deltas
    spec = [Attribute(size, "circle", "size"), Attribute(colour, "square", "colour", delay=0.4)]
    s = attribute_slider(sd15, PROMPT, spec, seed=1, steps=5, delay=0.6)
    assert s.prefix().step == 2
    for alphas in ((2.0, -3.0), (-1.0, 3.0)):
        edits = [Edit(size, "circle", alphas[0]), Edit(colour, "square", alphas[1], delay=0.4)]
        ref = generate(sd15, PROMPT, seed=1, steps=5, delay=0.6, edits=edits)
        np.testing.assert_array_equal(np.asarray(s.render(alphas)), np.asarray(ref))
    late = generate(
        sd15, PROMPT, seed=1, steps=5, delay=0.6, edits=[Edit(size, "circle", 2.0), Edit(colour, "square", -3.0)]
    )
    assert not np.array_equal(np.asarray(s.render((2.0, -3.0))), np.asarray(late))  # the colour's own delay acts
