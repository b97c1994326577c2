"""box_widget: pixel boxes drawn on the canvas → reprolib's normalised boxes; drawing gives the guided image."""

import numpy as np
import pytest

from reprolib.box_widget import box_drawer, boxes_from_drawing, normalised_box
from reprolib.generate import generate
from reprolib.plots import draw_boxes
from reprolib.tokens import SpanError

PROMPT = "a red circle and a blue square"


def test_pixel_box_to_normalised():
    assert normalised_box({"x": 64, "y": 0, "width": 128, "height": 64}, 256, 128) == (0.25, 0.0, 0.75, 0.5)
    # dragged up and left: turned around; past the picture's edge: clipped
    assert normalised_box({"x": 100, "y": 100, "width": -50, "height": -100}, 200, 200) == (0.25, 0.0, 0.5, 0.5)
    assert normalised_box({"x": -20, "y": 150, "width": 60, "height": 100}, 200, 200) == (0.0, 0.75, 0.2, 1.0)
    with pytest.raises(ValueError, match="covers no part"):
        normalised_box({"x": 300, "y": 0, "width": 10, "height": 10}, 200, 200)
    with pytest.raises(ValueError, match="x, y, width and height"):
        normalised_box({"x": 1, "y": 2}, 200, 200)
    with pytest.raises(ValueError, match="positive"):
        normalised_box({"x": 1, "y": 2, "width": 3, "height": 4}, 0, 200)


def test_last_box_per_phrase_in_phrase_order():
    drawn = [
        {"x": 0, "y": 0, "width": 10, "height": 10, "label": "blue square"},
        {"x": 0, "y": 0, "width": 20, "height": 20, "label": "red circle"},
        {"x": 10, "y": 10, "width": 10, "height": 10, "label": "blue square"},
    ]
    boxes = boxes_from_drawing(drawn, 20, 20, ["red circle", "blue square"])
    assert list(boxes) == ["red circle", "blue square"]
    assert boxes == {"red circle": (0.0, 0.0, 1.0, 1.0), "blue square": (0.5, 0.5, 1.0, 1.0)}
    with pytest.raises(ValueError, match="'green'"):
        boxes_from_drawing([{**drawn[0], "label": "green"}], 20, 20, ["red circle"])


def test_drawing_gives_the_guided_image(sd15):
    d = box_drawer(sd15, PROMPT, ["red circle", "blue square"], seed=2, steps=3, scale=2)
    w, h = d.size
    assert (w, h) == (2 * d.unguided.width, 2 * d.unguided.height)
    assert d.widget is not None  # built: the canvas and the result exist
    assert d.boxes == {} and d.canvas.label == "red circle"
    before = d.result.value
    d.canvas.bboxes = [{"x": w / 2, "y": h / 2, "width": w / 2, "height": h / 2, "label": "red circle"}]
    assert d.boxes == {"red circle": (0.5, 0.5, 1.0, 1.0)}
    assert d.canvas.label == "blue square"  # the next phrase without a box
    assert d.result.value != before
    ref = generate(sd15, PROMPT, seed=2, steps=3, boxes={"red circle": (0.5, 0.5, 1.0, 1.0)})
    np.testing.assert_array_equal(np.asarray(d.last), np.asarray(draw_boxes(ref, d.boxes, scale=2)))
    # a second box for the same phrase replaces the first
    d.canvas.bboxes = [*d.canvas.bboxes, {"x": 0, "y": 0, "width": w / 2, "height": h / 2, "label": "red circle"}]
    assert len(d.canvas.bboxes) == 1 and d.boxes == {"red circle": (0.0, 0.0, 0.5, 0.5)}


def test_bad_phrases_fail_before_any_render(sd15):
    with pytest.raises(SpanError, match="triangle"):
        box_drawer(sd15, PROMPT, ["triangle"], steps=2)
    with pytest.raises(ValueError, match="at least one phrase"):
        box_drawer(sd15, PROMPT, [], steps=2)


def test_a_static_view_gets_both_pictures(sd15):
    import base64
    import io

    from PIL import Image

    d = box_drawer(sd15, PROMPT, ["red circle"], seed=2, steps=2, scale=2)
    bundle = d._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    png = Image.open(io.BytesIO(base64.b64decode(bundle["image/png"])))
    assert png.size == (2 * d.size[0] + 8, d.size[1])
