"""Draw one box per phrase over the unguided image with the mouse; get the guided image back (for notebooks).

    drawer = reprolib.box_widget.box_drawer(pipe, "a red circle and a blue square", ["red circle", "blue square"])
    drawer            # draw a rectangle per phrase; the guided image appears beside it
    drawer.boxes      # {"red circle": (x0, y0, x1, y1), ...}, normalised, for generate(boxes=...)

The canvas is ``jupyter_bbox_widget.BBoxWidget`` (an anywidget: its JavaScript travels with the Python
package, so JupyterLab needs no extension of its own). It reports boxes in the pixels of the picture it
shows; :func:`normalised_box` turns them into reprolib's fractions of the image from the top left.
:meth:`BoxDrawer.render` is a plain function of the boxes, callable and testable without a browser.
"""

from __future__ import annotations

import base64
import io

import ipywidgets as w
from jupyter_bbox_widget import BBoxWidget
from PIL import Image

from .conditioning import TextConditioning
from .generate import generate
from .plots import draw_boxes
from .tokens import token_span

Box = tuple[float, float, float, float]


def normalised_box(bbox: dict, width: int, height: int) -> Box:
    """A widget box ``{"x", "y", "width", "height"}`` in pixels of a ``width``×``height`` picture → (x0, y0, x1, y1).

    Corners are clipped to the picture; a box dragged up or left (negative width/height) is turned around.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"the picture's width and height must be positive; got {width}×{height}")
    try:
        x, y, bw, bh = (float(bbox[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"a drawn box is a dict with numbers x, y, width and height (pixels); got {bbox!r}") from None
    xs = sorted((min(max(x / width, 0.0), 1.0), min(max((x + bw) / width, 0.0), 1.0)))
    ys = sorted((min(max(y / height, 0.0), 1.0), min(max((y + bh) / height, 0.0), 1.0)))
    if xs[0] == xs[1] or ys[0] == ys[1]:
        raise ValueError(f"the box {bbox!r} covers no part of the {width}×{height} picture: draw it over the image")
    return (xs[0], ys[0], xs[1], ys[1])


def boxes_from_drawing(bboxes: list[dict], width: int, height: int, phrases: list[str]) -> dict[str, Box]:
    """The last box drawn for each phrase (the widget's ``label``), normalised; phrases with none are left out."""
    out: dict[str, Box] = {}
    for b in bboxes:
        label = b.get("label")
        if label not in phrases:
            raise ValueError(f"a drawn box has label {label!r}, not one of the phrases {phrases}")
        out[label] = normalised_box(b, width, height)
    return {p: out[p] for p in phrases if p in out}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class BoxDrawer:
    """The unguided image to draw on (one class per phrase) and the guided image for the drawn boxes.

    ``scale``: the picture to draw on is the image enlarged this many times (a 64-pixel shapes image is too
    small to draw on). ``generate_kwargs`` go to :func:`reprolib.generate` for both images (steps, layout...).
    """

    def __init__(self, pipe, prompt: str, phrases, *, seed: int = 0, scale: int = 4, **generate_kwargs):
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        if not phrases:
            raise ValueError("give at least one phrase of the prompt to draw a box for, e.g. ['red circle']")
        toks = TextConditioning(pipe).tokenize(prompt)
        for p in phrases:
            token_span(toks, p)  # fail now if a phrase is not in the prompt
        if scale < 1:
            raise ValueError(f"scale enlarges the picture to draw on: an integer ≥ 1; got {scale}")
        self.pipe, self.prompt, self.phrases, self.seed, self.scale = pipe, prompt, phrases, seed, scale
        self.generate_kwargs = generate_kwargs
        self.unguided = generate(pipe, prompt, seed=seed, **generate_kwargs)
        self._widget = None
        self.last: Image.Image | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels of the picture drawn on."""
        return self.unguided.width * self.scale, self.unguided.height * self.scale

    def render(self, boxes: dict[str, Box]) -> Image.Image:
        """The guided image for ``boxes`` (normalised), enlarged like the canvas, with the boxes drawn on it."""
        image = generate(self.pipe, self.prompt, seed=self.seed, boxes=boxes, **self.generate_kwargs)
        return draw_boxes(image, boxes, scale=self.scale)

    @property
    def boxes(self) -> dict[str, Box]:
        """The boxes drawn so far, normalised (x0, y0, x1, y1), one per phrase."""
        if self._widget is None:
            return {}
        return boxes_from_drawing(self.canvas.bboxes, *self.size, self.phrases)

    @property
    def widget(self):
        """An ipywidgets HBox: the canvas (unguided image, one class per phrase) and the guided image."""
        if self._widget is None:
            big = self.unguided.resize(self.size, Image.NEAREST)
            self.canvas = BBoxWidget(image_bytes=_png(big), classes=self.phrases, hide_buttons=True)
            self.canvas.label = self.phrases[0]
            self.result = w.Image(value=_png(big), format="png", layout=w.Layout(width=f"{self.size[0]}px"))
            self.status = w.Label(f"draw a box for '{self.phrases[0]}'")
            self.canvas.observe(self._on_draw, names="bboxes")
            right = w.VBox([w.Label("guided"), self.result, self.status])
            self._widget = w.HBox([self.canvas, right])
        return self._widget

    def _on_draw(self, _change) -> None:
        # keep only the newest box of each phrase, then ask for the next phrase without one
        latest = {b.get("label"): b for b in self.canvas.bboxes}
        if len(latest) < len(self.canvas.bboxes):
            self.canvas.bboxes = list(latest.values())  # re-enters this callback once, with one box per phrase
            return
        boxes = self.boxes
        missing = [p for p in self.phrases if p not in boxes]
        if missing:
            self.canvas.label = missing[0]
        if not boxes:
            return
        self.status.value = "guiding…"
        self.last = self.render(boxes)
        self.result.value = _png(self.last)
        self.status.value = f"guided for {', '.join(boxes)}" + (f"; now draw '{missing[0]}'" if missing else "")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus a PNG of the canvas and the guided image: what JupyterLab shows where it
        cannot show the widget (a notebook not yet trusted, e.g. a fresh clone; a static viewer)."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        left = draw_boxes(self.unguided, self.boxes, scale=self.scale)
        right = Image.open(io.BytesIO(self.result.value)).convert("RGB")
        both = Image.new("RGB", (left.width + right.width + 8, max(left.height, right.height)), "white")
        both.paste(left, (0, 0)), both.paste(right, (left.width + 8, 0))
        bundle["image/png"] = base64.b64encode(_png(both)).decode()
        bundle["text/plain"] = f"box drawer for {self.phrases} in {self.prompt!r} (run the notebook to draw)"
        return bundle


def box_drawer(pipe, prompt: str, phrases, *, seed: int = 0, scale: int = 4, **generate_kwargs) -> BoxDrawer:
    """A canvas on which the reader draws one box per phrase of ``prompt``; display it in a notebook."""
    return BoxDrawer(pipe, prompt, phrases, seed=seed, scale=scale, **generate_kwargs)
