"""A slider per attribute that re-renders the image as you scrub α (for notebooks).

    size = reprolib.contrastive_delta(pipe, "shapes/size")
    reprolib.attribute_slider(pipe, "a red circle and a blue square", [(size, "circle", "size")])

Every frame is cached by its tuple of α values (least recently used dropped first), so scrubbing
back to a value seen before is instant. The first ``delay`` steps run the unedited prompt and are
the same for every α: they are computed once and each new frame starts after them.
:meth:`AttributeSlider.render` is a plain function of the alphas, so it can be called and tested
without a browser.

In a notebook the frames are computed by a background thread (``background=True``): a slider move only
asks for a frame, so the kernel stays free to hear the next move. Only the newest value asked for is
rendered; a frame under way for a value the reader has already left is abandoned at its next step, so
the last value shows first. While the reader looks, the thread renders the neighbouring values (one and
two steps either side), so the next step of the slider is usually already in the cache.
"""

from __future__ import annotations

import base64
import inspect
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as w
from PIL import Image

from . import checks
from .conditioning import TextConditioning
from .delta import Delta
from .device import cpu_threads
from .edits import Edit
from .generate import DELAY, Partial, defaults, first_edited_step, generate
from .tokens import token_span


@dataclass(frozen=True)
class Attribute:
    """One slider: the ``delta`` added to the tokens of ``pattern``, labelled ``name``; ``reach`` and
    ``delay`` as ``Edit.reach`` and ``Edit.delay`` (None: generate's choice)."""

    delta: Delta
    pattern: str
    name: str | None = None
    reach: str | None = None
    delay: float | None = None

    @property
    def label(self) -> str:
        return self.name or self.delta.meta.get("tag") or self.pattern


class Stale(Exception):
    """A frame was abandoned because the reader asked for another value meanwhile."""


class StopWhenStale:
    """A :class:`~reprolib.protocols.StepHook` that abandons a frame (raises :class:`Stale`) once ``stale()``."""

    def __init__(self, stale: Callable[[], bool]):
        self.stale = stale

    def __enter__(self) -> StopWhenStale:
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def before_step(self, i, t, latents, embeddings):
        if self.stale():
            raise Stale(f"abandoned before step {i}")
        return latents


@dataclass
class CacheInfo:
    hits: int
    misses: int
    size: int
    maxsize: int


def _attributes(spec) -> list[Attribute]:
    """Accept one or a list of ``Attribute``, ``(delta, pattern)`` or ``(delta, pattern, name)``."""
    if isinstance(spec, Attribute) or (isinstance(spec, tuple) and spec and isinstance(spec[0], Delta)):
        spec = [spec]
    out = []
    for item in spec:
        if isinstance(item, Attribute):
            out.append(item)
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3) and isinstance(item[0], Delta):
            out.append(Attribute(*item))
        else:
            raise TypeError(
                f"each attribute is (delta, pattern) or (delta, pattern, name) with a reprolib Delta; got {item!r}"
            )
    if not out:
        raise ValueError("give at least one attribute: [(delta, pattern, name), ...]")
    return out


def _check(pipe, prompt, seed, attributes, values, cache_size, threads, generate_kwargs) -> None:
    """The slider's arguments and the ``generate`` settings it will use, checked before the first frame."""
    if not isinstance(prompt, str):
        raise checks.InputTypeError(f"prompt must be one string, got {type(prompt).__name__}")
    checks.integer(seed, "seed", fix="The slider keeps one seed, e.g. seed=0.")
    if not (isinstance(values, (tuple, list)) and len(values) == 3):
        raise checks.InputTypeError(f"values is (min, max, step), e.g. (-2.0, 2.0, 0.25); got {values!r}")
    for name, v in zip(("values min", "values max", "values step"), values):
        checks.number(v, name, optional=False)
    checks.integer(cache_size, "cache_size", minimum=1)
    checks.count(threads, "threads")
    allowed = set(inspect.signature(generate).parameters) - {"pipe", "prompt", "seed", "edits", "until", "resume"}
    unknown = sorted(set(generate_kwargs) - allowed)
    if unknown:
        raise checks.InputTypeError(f"unknown setting(s) {unknown} for generate; allowed: {sorted(allowed)}")
    for a in attributes:
        checks.pattern(a.pattern, "attribute pattern")
    kw = {k: generate_kwargs.get(k) for k in ("steps", "guidance_scale", "negative_prompt", "height", "width")}
    edits = [(a.delta, a.pattern, 1.0, a.reach, a.delay) for a in attributes]
    delay = generate_kwargs.get("delay", DELAY)
    checks.sampling(pipe, prompt, seed, default_steps=defaults(pipe)[0], edits=edits, delay=delay, **kw)


class AttributeSlider:
    """Sliders for α of each attribute and the image they produce; ``render(alphas)`` is cached.

    ``values``: (min, max, step) of every slider. ``generate_kwargs`` go to :func:`reprolib.generate`
    (steps, guidance_scale, delay, height, ...); the seed stays fixed so only α changes the image.
    ``share_prefix=False`` recomputes the unedited first steps for every frame (same images, slower).
    ``threads``: torch CPU threads while rendering (None: torch's setting).
    ``background``: slider moves are rendered by a background thread, newest first (see the module);
    ``prefetch``: how many slider steps either side of the shown value it renders ahead (0: none).
    """

    def __init__(
        self,
        pipe,
        prompt: str,
        attributes,
        *,
        seed: int = 0,
        values: tuple[float, float, float] = (-2.0, 2.0, 0.25),
        cache_size: int = 64,
        share_prefix: bool = True,
        threads: int | None = None,
        background: bool = True,
        prefetch: int = 2,
        **generate_kwargs,
    ):
        self.pipe, self.prompt, self.seed, self.threads = pipe, prompt, seed, threads
        self.attributes = _attributes(attributes)
        _check(pipe, prompt, seed, self.attributes, values, cache_size, threads, generate_kwargs)
        lo, hi, step = values
        if not (lo < hi and step > 0):
            raise checks.InputError(f"values is (min, max, step) with min < max and step > 0; got {values}")
        if prefetch < 0:
            raise checks.InputError(f"prefetch is a number of slider steps either side, ≥ 0; got {prefetch}")
        self.values = (float(lo), float(hi), float(step))
        self.generate_kwargs = generate_kwargs
        self.share_prefix, self.background, self.prefetch = share_prefix, background, prefetch
        # fail now, not at the first slider move: wrong model, or a word missing from the prompt
        cond = TextConditioning(pipe)
        toks = cond.tokenize(prompt)
        for a in self.attributes:
            a.delta.check(cond)
            token_span(toks, a.pattern)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[float, ...], object] = OrderedDict()
        self._hits = self._misses = self._abandoned = 0
        self._prefix = None  # the shared unedited first steps (a reprolib.generate.Partial)
        self._widget = None
        self._compute = threading.RLock()  # one frame at a time: the pipeline is shared
        self._asked = threading.Condition()  # guards _wanted, _ahead, _busy
        self._wanted: tuple[float, ...] | None = None  # the newest value the reader asked for, not shown yet
        self._ahead: list[tuple[float, ...]] = []  # neighbours to render while the reader looks
        self._busy = False
        self._thread: threading.Thread | None = None
        self.shown: tuple[float, ...] | None = None

    # --- the pure part ------------------------------------------------------------------------------
    def _key(self, alphas) -> tuple[float, ...]:
        alphas = (alphas,) if isinstance(alphas, (int, float)) else tuple(alphas)
        if len(alphas) != len(self.attributes):
            raise ValueError(f"need one α per attribute ({[a.label for a in self.attributes]}), got {alphas}")
        # rounding makes 0.1 + 0.2 and 0.3 the same frame
        return tuple(round(float(a), 6) for a in alphas)

    def render(self, alphas, *, stale: Callable[[], bool] | None = None) -> object:
        """The image (PIL) for these α values, one per attribute; from the cache when seen before.

        ``stale``: checked before every step; when it returns True the frame is abandoned (:class:`Stale`).
        """
        key = self._key(alphas)
        with self._compute:
            if key in self._cache:
                self._hits += 1
                self._cache.move_to_end(key)
                return self._cache[key]
            self._misses += 1
            edits = [Edit(a.delta, a.pattern, alpha, a.reach, a.delay) for a, alpha in zip(self.attributes, key)]
            kw = dict(self.generate_kwargs)
            if stale is not None:
                kw["hooks"] = [*kw.get("hooks", ()), StopWhenStale(stale)]
            with cpu_threads(self.threads):
                prefix = self.prefix()
                try:
                    image = generate(self.pipe, self.prompt, seed=self.seed, edits=edits, resume=prefix, **kw)
                except Stale:
                    self._misses -= 1
                    self._abandoned += 1
                    raise
            self._cache[key] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return image

    def prefix(self) -> Partial | None:
        """The steps before the first edit starts (its ``delay``), run once with no edits; None when there are none."""
        if self._prefix is None and self.share_prefix:
            kw = dict(self.generate_kwargs)
            steps = defaults(self.pipe)[0] if kw.get("steps") is None else kw["steps"]
            delay = kw.pop("delay", DELAY)
            first_edited = min(first_edited_step(steps, delay, a.delay) for a in self.attributes)
            if first_edited == 0 or kw.get("latents") is not None or kw.get("hooks") or kw.get("boxes"):
                return None  # nothing shared, or guidance hooks that must see every step themselves
            kw["steps"] = steps
            with self._compute, cpu_threads(self.threads):
                self._prefix = generate(self.pipe, self.prompt, seed=self.seed, until=first_edited, **kw)
        return self._prefix

    def neighbours(self, key: tuple[float, ...]) -> list[tuple[float, ...]]:
        """Values one, then two, ... (``prefetch``) slider steps from ``key`` along each slider, within range."""
        lo, hi, step = self.values
        out = []
        for d in range(1, self.prefetch + 1):
            for i in range(len(key)):
                for sign in (1, -1):
                    v = key[i] + sign * d * step
                    if lo - 1e-9 <= v <= hi + 1e-9:
                        out.append(self._key(key[:i] + (v,) + key[i + 1 :]))
        return out

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._hits, self._misses, len(self._cache), self.cache_size)

    def cache_clear(self) -> None:
        with self._compute:
            self._cache.clear()
            self._prefix = None
            self._hits = self._misses = self._abandoned = 0

    # --- newest first, neighbours ahead: the background thread --------------------------------------
    def request(self, alphas) -> None:
        """Ask for the frame of ``alphas`` to be shown; returns at once (the background thread renders it)."""
        key = self._key(alphas)
        with self._asked:
            self._wanted = key
            self._ahead = []
            self._asked.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="reprolib-slider", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the last value asked for is shown and nothing is rendered ahead; False on timeout."""
        with self._asked:
            return self._asked.wait_for(lambda: self._wanted is None and not self._ahead and not self._busy, timeout)

    def _moved_on(self) -> bool:
        return self._wanted is not None

    def _next(self) -> tuple[tuple[float, ...], bool]:
        """Block for work: (the value asked for, True) first, else (a neighbour to render ahead, False)."""
        with self._asked:
            self._busy = False
            self._asked.notify_all()
            self._asked.wait_for(lambda: self._wanted is not None or self._ahead)
            self._busy = True
            if self._wanted is not None:
                key, self._wanted = self._wanted, None
                return key, True
            return self._ahead.pop(0), False

    def _work(self) -> None:
        while True:
            key, asked = self._next()
            if not asked and key in self._cache:
                continue
            try:
                # abandoned only for another value: asking again for this one keeps the work done
                image = self.render(key, stale=lambda k=key: self._wanted not in (None, k))
            except Stale:
                continue  # the reader moved on: the newer value is next
            with self._asked:
                if self._wanted == key:  # asked for while it was rendered ahead
                    self._wanted, asked = None, True
                show = asked and self._wanted is None  # a newer value asked for meanwhile goes first
            if show:
                self._display(image)
                self.shown = key
                with self._asked:
                    if self._wanted is None:
                        self._ahead = [k for k in self.neighbours(key) if k not in self._cache]

    # --- the widget ---------------------------------------------------------------------------------
    @property
    def alphas(self) -> tuple[float, ...]:
        return tuple(s.value for s in self.sliders)

    @property
    def widget(self):
        """An ipywidgets VBox: one FloatSlider per attribute above the image (built on first use)."""
        if self._widget is None:
            lo, hi, step = self.values
            # continuous_update=False: render once on release, not for every pixel dragged
            self.sliders = [
                w.FloatSlider(
                    value=min(max(0.0, lo), hi),
                    min=lo,
                    max=hi,
                    step=step,
                    description=a.label,
                    continuous_update=False,
                    readout_format=".2f",
                )
                for a in self.attributes
            ]
            self.image = w.Image(format="png", layout=w.Layout(width="256px", height="256px"))
            self.caption = w.Label(self.prompt)
            for s in self.sliders:
                s.observe(self._on_change, names="value")
            self._widget = w.VBox([*self.sliders, self.image, self.caption])
            self._display(self.render(self.alphas))  # the first frame at once: a saved notebook shows it
            self.shown = self._key(self.alphas)
        return self._widget

    def _display(self, image) -> None:
        self.frame = image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        self.image.value = buf.getvalue()

    def _on_change(self, _change) -> None:
        if self.background:
            self.request(self.alphas)
        else:
            self._display(self.render(self.alphas))
            self.shown = self._key(self.alphas)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The live widget, plus the frame as a PNG: what JupyterLab shows where it cannot show the widget
        (a notebook not yet trusted, e.g. a fresh clone; a static viewer)."""
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        frame = self.frame.resize((256, 256 * self.frame.height // self.frame.width), Image.NEAREST)  # as shown
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        bundle["image/png"] = base64.b64encode(buf.getvalue()).decode()
        bundle["text/plain"] = f"attribute slider on {self.prompt!r} (run the notebook to move it)"
        return bundle


def attribute_slider(pipe, prompt: str, attributes, **kwargs) -> AttributeSlider:
    """Sliders for ``attributes`` (``[(delta, pattern, name), ...]``) on ``prompt``; display it in a notebook.

    Takes ``AttributeSlider``'s keywords (seed, values, cache_size, …, and ``generate``'s).
    """
    return AttributeSlider(pipe, prompt, attributes, **kwargs)
