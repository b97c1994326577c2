"""The shapes world: scenes of coloured shapes, their captions and their renderings.

Everything here is deterministic from a seed, so a scene, its caption and its image can be
rebuilt anywhere. Sizes are continuous; the words "small"/"big" come from thresholds on them
and are sometimes dropped, so the text encoder must learn a *direction* for size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RES = 64
BACKGROUND = (24, 24, 32)
PALETTE = {
    "red": (225, 45, 45),
    "green": (45, 190, 70),
    "blue": (50, 90, 240),
    "yellow": (240, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
SIZE_RANGE = (5.0, 13.0)  # half-extent in pixels
SMALL_BELOW, BIG_ABOVE = 7.5, 10.0  # size words; between them no word is given
SIZE_MIDDLE = (SMALL_BELOW + BIG_ABOVE) / 2  # the line a measured "small"/"big" is judged by
# area of a shape of half-extent s is AREA_FACTOR[shape] * s**2
AREA_FACTOR = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
WORDS = ("a", "and", "small", "big", *PALETTE, *SHAPES)
P_OBJECTS = (0.4, 0.35, 0.25)  # chance of 1, 2, 3 objects in a scene (the v1 training mix)
# Scene distributions the trainer can pick by name (``--mix``): keyword arguments of ``random_scene``.
# v2 shifts weight to two- and three-object scenes and makes a third of multi-object scenes repeat a
# shape in different colours ("a red circle and a blue circle"), so that which colour, shape and size
# go with which object has to be bound per object rather than read off the caption as a bag of words.
# v3 shifts more weight to three-object scenes, where a swap model's count fails (a duplicated object:
# 12 of the 14 count failures of 200 captions on runs/shapes_v4sd3k were three-object captions)
# v4 is v2 with a third of multi-object scenes repeating a colour ("a red circle and a red square"): in v1-v3
# colours never repeat, so two tokens of near colours never both stand for an object, and an edited token
# that turns blue takes a green bystander's place instead of being drawn beside it (session 23).
# v5 / v6 are v2 / v4 with the objects named in random order: placement tries big objects that do not fit
# again, so without it later objects are smaller (a third object is small 52% of the time, the first 31%), and
# the encoder learns "small" and "named later" as related directions (the size delta's cosine with a later
# object's noun minus a first one's, within each size word, is −0.13 to −0.35 on shipped v1:
# ``python -m reprolib.evaluation --n 0 --order-bias 3000``). Trained on, they weaken that relation and keep
# the bystander no better (session 24, checkpoints/shapes_v3/README.md)
# v7 is v2 with a third of multi-object scenes placing each object against one placed before it (``touch``):
# in v1-v6 objects never come within 2 px, so a size delta that grows its subject into a bystander asks for a
# picture the model never saw, and it draws the two as one blob of one colour (session 27: one seed in six beside
# a yellow bystander). Touching scenes show two objects meeting, each keeping its own colour and shape. Trained on
# (session 28, checkpoints/shapes_v3/README.md) they made it worse: the model then draws two objects touching
# twice as often (10% of unedited pairs, 5% before), and the grown subject takes the bystander's colour in more
# of them (leak beside yellow 0.61, 0.38 before).
# v8 is the opposite lever: v2 with at least 6 px between objects instead of 2, so that a grown subject meets its
# neighbour less often.
# v9 is v8 with 12 px between the two objects of a two-object scene (three big objects cannot keep more than 6):
# the leak prompts are two-object prompts, and v8 lowered their leak beside yellow (session 28).
# v10 is v8 with a third of multi-object scenes naming two near colours (``NEAR_COLOURS``): the grounded candidates
# of sessions 27-30 draw "a green square and a blue square" as one blue square in up to four seeds in ten, and the
# composed edit, which turns its subject blue beside a green bystander, fails about as often (session 31).
MIXES = {
    "v1": {},
    "v2": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35},
    "v3": {"p_objects": (0.15, 0.35, 0.5), "p_repeat_shape": 0.35},
    "v4": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "p_repeat_colour": 0.35},
    "v5": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "shuffle_order": True},
    "v6": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "p_repeat_colour": 0.35, "shuffle_order": True},
    "v7": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "p_touch": 0.35},
    "v8": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "gap": 6.0},
    "v9": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "gap": 6.0, "pair_gap": 12.0},
    "v10": {"p_objects": (0.25, 0.4, 0.35), "p_repeat_shape": 0.35, "gap": 6.0, "p_near_colour": 0.35},
}
# The palette's nearest pairs (session 23): green is the colour nearest blue, yellow the one nearest red
NEAR_COLOURS = (("blue", "green"), ("red", "yellow"))
TOUCH_GAP = (-1.0, 0.5)  # px between touching objects' bounding boxes (negative: the later one covers a sliver)


@dataclass(frozen=True)
class Obj:
    """One object: shape, colour name, half-extent ``size`` (px) and centre (px, origin top-left)."""

    shape: str
    colour: str
    size: float
    cx: float
    cy: float

    @property
    def size_word(self) -> str | None:
        return size_word(self.size)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return (self.cx - self.size, self.cy - self.size, self.cx + self.size, self.cy + self.size)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    caption: str


def size_word(size: float) -> str | None:
    if size < SMALL_BELOW:
        return "small"
    if size > BIG_ABOVE:
        return "big"
    return None


def phrase(obj: Obj, with_size: bool = True) -> str:
    """'a big red circle' (the size word only when the size earns one and ``with_size``)."""
    words = ["a"]
    if with_size and obj.size_word:
        words.append(obj.size_word)
    words += [obj.colour, obj.shape]
    return " ".join(words)


def caption_for(objects: tuple[Obj, ...], rng: np.random.Generator, p_drop_size: float = 0.2) -> str:
    parts = [phrase(o, with_size=rng.random() >= p_drop_size) for o in objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def overlaps(a: Obj, b: Obj, margin: float = 2.0) -> bool:
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    return not (ax1 + margin < bx0 or bx1 + margin < ax0 or ay1 + margin < by0 or by1 + margin < ay0)


def touching(rng: np.random.Generator, partner: Obj, shape: str, colour: str, size: float) -> Obj:
    """An object beside ``partner`` (left, right, above or below), bounding boxes ``TOUCH_GAP`` apart."""
    side = int(rng.integers(4))
    reach = partner.size + size + float(rng.uniform(*TOUCH_GAP))
    across = float(rng.uniform(-0.5, 0.5)) * min(partner.size, size)  # off the axis, so they still meet
    dx, dy = [(-reach, across), (reach, across), (across, -reach), (across, reach)][side]
    return Obj(shape, colour, size, partner.cx + dx, partner.cy + dy)


def random_objects(
    rng: np.random.Generator,
    n: int,
    res: int = RES,
    repeat_shape: bool = False,
    repeat_colour: bool = False,
    touch: bool = False,
    gap: float = 2.0,
    near_colour: bool = False,
) -> tuple[Obj, ...]:
    """``n`` non-overlapping objects, fully inside the image, of distinct colours unless ``repeat_colour``.

    ``repeat_shape`` (needs ``n >= 2``): two of the objects, at random places in the list, share one
    shape (the others' shapes stay random, so a three-object scene may repeat it three times).
    ``repeat_colour`` (needs ``n >= 2``): two of the objects share one colour, the others' stay distinct.
    ``near_colour`` (needs ``n >= 2``; not with ``repeat_colour``): two of the objects take one of ``NEAR_COLOURS``'
    pairs.
    ``touch``: each object after the first meets one placed before it (``touching``); falls back to a free
    place when none fits. ``gap``: the least distance (px) between two objects' bounding boxes otherwise.
    When a placement finds no room, the whole scene is placed again (the streams of scenes that fit are kept).
    """
    colours = list(rng.choice(list(PALETTE), size=n, replace=False))
    if repeat_colour and n >= 2:
        i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
        colours[j] = colours[i]
    elif near_colour and n >= 2:
        pair = NEAR_COLOURS[int(rng.integers(len(NEAR_COLOURS)))]
        rest = [c for c in colours if c not in pair]
        i, j = (int(k) for k in rng.choice(n, size=2, replace=False))
        colours = [rest.pop() if k not in (i, j) else pair[k == j] for k in range(n)]
    fixed: dict[int, str] = {}
    if repeat_shape and n >= 2:
        shape = str(rng.choice(SHAPES))
        fixed = {int(i): shape for i in rng.choice(n, size=2, replace=False)}
    for _ in range(20):  # a first object placed big in the middle can leave no room: place them all again
        objs = _place(rng, colours, fixed, res, touch, gap)
        if objs is not None:
            return objs
    raise RuntimeError(f"could not place {n} objects {gap:g} px apart in a {res} px image")


def _place(
    rng: np.random.Generator, colours: list, fixed: dict[int, str], res: int, touch: bool, gap: float
) -> tuple[Obj, ...] | None:
    """One try of ``random_objects``' placement: None when an object finds no place in 1,000 tries."""
    objs: list[Obj] = []
    for k, colour in enumerate(colours):
        for attempt in range(1000):  # v8's wider gap needs more tries for three big objects
            size = float(rng.uniform(*SIZE_RANGE))
            # a retry draws a new size too, and a smaller one fits more often: later objects come out smaller
            cx, cy = rng.uniform(size + 1, res - size - 1, size=2)
            shape = fixed[k] if k in fixed else str(rng.choice(SHAPES))
            o = Obj(shape, str(colour), size, float(cx), float(cy))
            if touch and objs and attempt < 100:
                o = touching(rng, objs[int(rng.integers(len(objs)))], shape, str(colour), size)
                inside = size + 1 <= min(o.cx, o.cy) and max(o.cx, o.cy) <= res - size - 1
                # the partner's sliver of overlap is allowed (TOUCH_GAP), a deeper one with anything is not
                if inside and not any(overlaps(o, p, margin=TOUCH_GAP[0] - 0.01) for p in objs):
                    objs.append(o)
                    break
                continue
            if not any(overlaps(o, p, margin=gap) for p in objs):
                objs.append(o)
                break
        else:
            return None
    return tuple(objs)


def random_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    p_empty: float = 0.0,
    p_drop_size: float = 0.2,
    p_objects: tuple[float, float, float] = P_OBJECTS,
    p_repeat_shape: float = 0.0,
    p_repeat_colour: float = 0.0,
    shuffle_order: bool = False,
    p_touch: float = 0.0,
    gap: float = 2.0,
    pair_gap: float | None = None,
    p_near_colour: float = 0.0,
) -> Scene:
    """A random scene. ``p_objects``: chances of 1, 2, 3 objects (unless ``n_objects``);
    ``p_repeat_shape`` / ``p_repeat_colour``: chance that a multi-object scene repeats a shape / a colour.
    ``shuffle_order``: name the objects in random order, not the order they were placed in (see ``MIXES``).
    ``p_near_colour``: chance that a multi-object scene names two near colours (``NEAR_COLOURS``).
    ``p_touch``: chance that a multi-object scene places its objects against each other (``random_objects``);
    ``gap``: the least distance between the others' bounding boxes; ``pair_gap``: that distance in a
    two-object scene (default ``gap``).
    With the defaults the random stream, and so every scene, is the v1 one (and v2's stays v2's)."""
    n = n_objects if n_objects is not None else int(rng.choice([1, 2, 3], p=list(p_objects)))
    repeat = n >= 2 and p_repeat_shape > 0 and rng.random() < p_repeat_shape
    same_colour = n >= 2 and p_repeat_colour > 0 and rng.random() < p_repeat_colour
    touch = n >= 2 and p_touch > 0 and rng.random() < p_touch
    near = n >= 2 and p_near_colour > 0 and rng.random() < p_near_colour
    between = pair_gap if n == 2 and pair_gap is not None else gap
    objs = random_objects(
        rng, n, repeat_shape=repeat, repeat_colour=same_colour, touch=touch, gap=between, near_colour=near
    )
    if shuffle_order and n >= 2:
        objs = tuple(objs[int(i)] for i in rng.permutation(n))
    caption = "" if rng.random() < p_empty else caption_for(objs, rng, p_drop_size)
    return Scene(objs, caption)


def scenes(n: int, seed: int, **kw) -> list[Scene]:
    """``n`` random scenes, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **kw) for _ in range(n)]


def coverage(obj: Obj, res: int = RES, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by ``obj`` (antialiased by supersampling its bounding box)."""
    out = np.zeros((res, res), np.float32)
    x0, y0 = max(0, int(obj.cx - obj.size) - 1), max(0, int(obj.cy - obj.size) - 1)
    x1, y1 = min(res, int(obj.cx + obj.size) + 2), min(res, int(obj.cy + obj.size) + 2)
    cx = x0 + (np.arange((x1 - x0) * supersample) + 0.5) / supersample  # sub-pixel centres, pixel units
    cy = y0 + (np.arange((y1 - y0) * supersample) + 0.5) / supersample
    x, y = np.meshgrid(cx, cy)
    dx, dy, s = x - obj.cx, y - obj.cy, obj.size
    if obj.shape == "circle":
        inside = dx**2 + dy**2 <= s**2
    elif obj.shape == "square":
        inside = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    elif obj.shape == "triangle":  # upright: apex at top, base at the bottom
        inside = (dy <= s) & (dy >= -s) & (np.abs(dx) <= (dy + s) / 2)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    out[y0:y1, x0:x1] = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    return out


def render(scene: Scene | tuple[Obj, ...], res: int = RES) -> np.ndarray:
    """The scene as a uint8 (res, res, 3) image."""
    objs = scene.objects if isinstance(scene, Scene) else scene
    img = np.empty((res, res, 3), np.float32)
    img[:] = BACKGROUND
    for o in objs:
        a = coverage(o, res)[..., None]
        img = img * (1 - a) + np.asarray(PALETTE[o.colour], np.float32) * a
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def parse_caption(caption: str) -> list[dict]:
    """Objects a caption asks for: [{'shape', 'colour', 'size_word'}] (inverse of ``caption_for``)."""
    out = []
    for part in caption.replace(" and ", ", ").split(","):
        words = part.split()
        if not words:
            continue
        shape = next((w for w in words if w in SHAPES), None)
        colour = next((w for w in words if w in PALETTE), None)
        size = next((w for w in words if w in ("small", "big")), None)
        if shape is None or colour is None:
            raise ValueError(
                f"cannot parse {part.strip()!r} in caption {caption!r}: "
                f"expected '[a] [small|big] <{'|'.join(PALETTE)}> <{'|'.join(SHAPES)}>'"
            )
        out.append({"shape": shape, "colour": colour, "size_word": size})
    return out
