"""Cross-attention maps: which image regions each prompt token feeds, read out with attention processors.

diffusers' default processor (``AttnProcessor2_0``) calls fused SDPA, which never materialises the
attention probabilities. :class:`ProbsProcessor` computes them explicitly, softmax(QKᵀ·scale), for
the *selected* cross-attention layers only, hands them to listeners (recorders such as
:class:`AttentionStore`, editors such as forward layout guidance) and is otherwise the default
computation; every other layer keeps its processor untouched.

    with record_attention(pipe.unet, layers=["mid", "up.1"]) as store:
        pipe.unet(...)
    store.grid(name)  # (batch, heads, h, w, tokens)

Layer names are the ``Attention`` modules' names, e.g.
``up_blocks.1.attentions.0.transformer_blocks.0.attn2``; patterns ``"mid"``, ``"up.1"``, ``"down"``
select by prefix, and an ``int`` selects every cross-attention layer whose maps are that many cells
wide at the UNet's default latent size (``16``: the 16×16 layers of SD 1.5 at 512 px).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

from .conditioning import TextConditioning, Tokens
from .tokens import token_span


# ----------------------------------------------------------------------------- layers

def _depth(name: str, n_blocks: int) -> int:
    """How many times the latents were halved before this layer (standard UNet2DConditionModel layout)."""
    kind, _, rest = name.partition(".")
    if kind == "mid_block":
        return n_blocks - 1
    index = int(rest.split(".")[0])
    return index if kind == "down_blocks" else n_blocks - 1 - index


def cross_attention_layers(unet, latent_size: int | None = None) -> list[tuple[str, int]]:
    """Every cross-attention layer as ``(name, map side)``, in execution order (down, mid, up).

    The side is the width of its attention maps for ``latent_size``-wide latents (default: the UNet's
    ``sample_size``, i.e. the model's native image size).
    """
    size = latent_size or unet.config.sample_size
    size = size[-1] if isinstance(size, (tuple, list)) else size
    n = len(unet.config.block_out_channels)
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    out = []
    for key in unet.attn_processors:
        name = key.removesuffix(".processor")
        if getattr(unet.get_submodule(name), "is_cross_attention", False):
            out.append((name, max(1, size // 2 ** _depth(name, n))))
    # attn_processors lists modules by registration order, which is down, up, mid; sort into run order
    return sorted(out, key=lambda nr: order[nr[0].split(".")[0]])


def default_layers(unet) -> list[str]:
    """The guidance layers of Chen et al.: the mid block and the first up block with cross-attention.

    * SD 1.5 / 2.1 (64×64 latents): mid (8×8) + ``up_blocks.1`` (16×16, three layers) — exactly the
      official code's ``attn_maps_mid`` + ``attn_maps_up[0]``.
    * SDXL (128×128 latents): mid + ``up_blocks.0``, both 32×32 (10 transformer layers per
      attention). SDXL has no 8×8/16×16 cross-attention; these are its lowest-resolution maps, the
      same place in the network, and its first cross-attention up block, as for SD.
    * A mid block whose maps are smaller than 8×8 cannot tell a quadrant from its neighbour; then every
      layer at the first up block's resolution is used instead. Shapes world (16×16 latents): mid is 4×4,
      so its three 8×8 layers (``down_blocks.1``, ``up_blocks.1`` ×2), where its nouns localise best
      (MODEL_CARD.md) and where ``benchmarks/layout.py`` measured the guidance.
    """
    layers = cross_attention_layers(unet)
    mid = [n for n, _ in layers if n.startswith("mid_block.")]
    ups = sorted({int(n.split(".")[1]) for n, _ in layers if n.startswith("up_blocks.")})
    first_up = [n for n, _ in layers if ups and n.startswith(f"up_blocks.{ups[0]}.")]
    side = dict(layers)
    if mid and side[mid[0]] < 8 and first_up:
        return [n for n, r in layers if r == side[first_up[0]]]
    return mid + first_up


def _expand(pattern: str) -> str:
    p = "mid_block" + pattern[3:] if pattern == "mid" or pattern.startswith("mid.") else pattern
    return re.sub(r"^(up|down)(?=\.|$)", r"\1_blocks", p)


def match_layers(layers: Sequence[tuple[str, int]], spec) -> list[str]:
    """The names among ``layers`` (``(name, side)`` pairs) that ``spec`` selects; see :func:`select_layers`."""
    names = [n for n, _ in layers]
    if spec is None:
        return names
    if isinstance(spec, (str, int)):
        spec = [spec]
    chosen: set[str] = set()
    for p in spec:
        if isinstance(p, int):
            hit = [n for n, r in layers if r == p]
        else:
            q = _expand(str(p))
            hit = [n for n in names if n == q or n.startswith(q + ".")]
        if not hit:
            sides = sorted({r for _, r in layers})
            blocks = sorted({".".join(n.split(".")[:2]).replace(".attentions", "") for n in names})
            raise ValueError(f"layer pattern {p!r} selects no cross-attention layer. Use a block prefix "
                             f"({', '.join(blocks)}; 'mid', 'up.N', 'down.N' for short), a full layer name, "
                             f"or a map side in {sides}.")
        chosen.update(hit)
    return [n for n in names if n in chosen]


def select_layers(unet, layers=None) -> list[str]:
    """Cross-attention layer names from ``layers``: ``None`` (all), ``"default"`` (:func:`default_layers`),
    or patterns — ``"mid"``, ``"up.1"``, ``"down"``, a full name — and ints (map side at the default size)."""
    every = cross_attention_layers(unet)
    specs = [layers] if isinstance(layers, (str, int)) else layers
    if specs is None or "default" not in specs:
        return match_layers(every, layers)
    rest = [p for p in specs if p != "default"]
    chosen = set(default_layers(unet)) | (set(match_layers(every, rest)) if rest else set())
    return [n for n, _ in every if n in chosen]


def grid_shape(cells: int, aspect: float = 1.0) -> tuple[int, int]:
    """(h, w) of a flattened map of ``cells`` positions whose height/width ratio is ``aspect``."""
    h = max(1, round(math.sqrt(cells * aspect)))
    w = cells // h
    if h * w != cells:
        raise ValueError(f"a map of {cells} cells is not a grid with height/width {aspect:g}")
    return h, w


# ----------------------------------------------------------------------------- the processor

class ProbsProcessor:
    """``AttnProcessor2_0``'s computation with the probabilities made explicit and passed to listeners.

    A listener is callable as ``listener(name, probs)`` with ``probs`` of shape (batch, heads, queries,
    keys) and has ``active`` (skip when False) and ``edits`` (True: may return replaced probabilities,
    run before observers so that these see what the layer used) attributes. With no active listener
    the layer runs diffusers' own SDPA processor.
    """

    def __init__(self, name: str):
        self.name = name
        self.listeners: list = []
        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        live = [lis for lis in self.listeners if lis.active]
        if not live:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_like = hidden_states.ndim == 4
        if image_like:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):  # (B, L, heads·d) → (B, heads, L, d)
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        q, k, v = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if attention_mask is not None:  # (B·heads, 1 | queries, keys), added to the logits
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            if attention_mask.ndim == 2:  # a (batch, keys) mask: one row for all queries
                attention_mask = attention_mask[:, None]
        probs = attn.get_attention_scores(q.flatten(0, 1), k.flatten(0, 1), attention_mask)
        probs = probs.view(batch, attn.heads, *probs.shape[1:])
        for lis in sorted(live, key=lambda x: not getattr(x, "edits", False)):
            new = lis(self.name, probs)
            if new is not None:
                probs = new
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout
        if image_like:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def attach(unet, names: Iterable[str], listener) -> dict:
    """Give ``listener`` the probabilities of layers ``names``; returns what :func:`detach` needs.

    Layers that already run a :class:`ProbsProcessor` get one more listener (so recorders and
    guidance compose); the others get a new one. ``set_attn_processor`` needs every processor, so the
    full dict is passed with the rest unchanged.
    """
    procs = dict(unet.attn_processors)
    replaced = {}
    for name in names:
        key = name + ".processor"
        if key not in procs:
            raise KeyError(f"{name!r} is not an attention layer of this UNet")
        if not isinstance(procs[key], ProbsProcessor):
            replaced[key] = procs[key]
            procs[key] = ProbsProcessor(name)
        procs[key].listeners.append(listener)
    unet.set_attn_processor(procs)
    return replaced


def detach(unet, listener, replaced: dict) -> None:
    """Undo :func:`attach`: drop the listener; restore the original processor where no listener is left.

    Nest stores (enter B inside A, leave B first); interleaving would restore A's originals under B.
    """
    procs = dict(unet.attn_processors)
    for key, proc in procs.items():
        if isinstance(proc, ProbsProcessor):
            proc.listeners = [x for x in proc.listeners if x is not listener]
            if not proc.listeners and key in replaced:
                procs[key] = replaced[key]
    unet.set_attn_processor(procs)


# ----------------------------------------------------------------------------- recording

class _Full(Exception):
    """Raised by a store with ``stop_when_full`` once every layer is recorded: the rest of the UNet is not needed."""


class AttentionStore:
    """Records cross-attention probabilities per layer and step while installed (a context manager).

    ``maps[name][step]`` is (batch, heads, queries, tokens); :meth:`grid` reshapes to (batch, heads,
    h, w, tokens). ``rows`` keeps part of the batch: ``"cond"`` is the second half (the conditional
    branch of a classifier-free-guidance batch), or a slice / list of indices. ``batch``: record only
    calls with this batch size (so a store for the CFG pass ignores guidance's conditional-only
    passes). ``heads="mean"`` and ``tokens`` (positions to keep) shrink what is kept; ``to_cpu``
    moves it off the GPU. ``keep_grad`` keeps the autograd graph (for losses on the maps). ``step``
    is set by whoever drives the loop; ``steps`` restricts recording to those steps.
    """

    edits = False

    def __init__(self, unet, layers=None, *, keep_grad: bool = False, rows=None, batch: int | None = None,
                 heads: str = "keep", tokens: Sequence[int] | None = None, to_cpu: bool = False,
                 steps: Iterable[int] | None = None, aspect: float = 1.0, stop_when_full: bool = False):
        if heads not in ("keep", "mean"):
            raise ValueError(f"heads must be 'keep' or 'mean', not {heads!r}")
        self.unet = unet
        self.layers = select_layers(unet, layers)
        self.resolutions = dict(cross_attention_layers(unet))
        self.keep_grad, self.rows, self.batch, self.heads = keep_grad, rows, batch, heads
        self.tokens = None if tokens is None else list(tokens)
        self.to_cpu, self.aspect, self.stop_when_full = to_cpu, aspect, stop_when_full
        self.steps = None if steps is None else set(steps)
        self.step = 0
        self.active = True
        self.maps: dict[str, dict[int, torch.Tensor]] = {}
        self._replaced: dict | None = None

    def __enter__(self) -> AttentionStore:
        self._replaced = attach(self.unet, self.layers, self)
        return self

    def __exit__(self, *exc) -> None:
        detach(self.unet, self, self._replaced or {})
        self._replaced = None

    def clear(self) -> None:
        self.maps = {}

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        if self.batch is not None and probs.shape[0] != self.batch:
            return
        if self.steps is not None and self.step not in self.steps:
            return
        p = probs
        if isinstance(self.rows, str):
            if self.rows != "cond":
                raise ValueError(f"rows must be 'cond', a slice or indices, not {self.rows!r}")
            p = p[p.shape[0] // 2:]
        elif self.rows is not None:
            p = p[self.rows]
        if self.tokens is not None:
            p = p[..., self.tokens]
        if self.heads == "mean":
            p = p.mean(1, keepdim=True)
        if not self.keep_grad:
            p = p.detach()
            if self.to_cpu:
                p = p.float().cpu()
        self.maps.setdefault(name, {})[self.step] = p
        if self.stop_when_full and all(self.step in self.maps.get(n, {}) for n in self.layers):
            raise _Full

    def get(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch, heads, queries, tokens) of layer ``name`` at ``step`` (default: the last recorded)."""
        if name not in self.maps:
            raise KeyError(f"no maps recorded for {name!r}; recorded: {sorted(self.maps)}")
        by_step = self.maps[name]
        return by_step[max(by_step) if step is None else step]

    def grid(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch, heads, h, w, tokens) of layer ``name`` at ``step``."""
        p = self.get(name, step)
        h, w = grid_shape(p.shape[2], self.aspect)
        return p.reshape(*p.shape[:2], h, w, p.shape[-1])

    def flat(self, name: str, step: int | None = None) -> torch.Tensor:
        """(batch·heads, queries, tokens), the layout of ``attn.get_attention_scores``."""
        p = self.get(name, step)
        return p.flatten(0, 1)


def record_attention(unet, layers=None, keep_grad: bool = False, **kwargs) -> AttentionStore:
    """``with record_attention(unet, ["mid", "up.1"]) as store: ...`` — see :class:`AttentionStore`."""
    return AttentionStore(unet, layers, keep_grad=keep_grad, **kwargs)


# ----------------------------------------------------------------------------- maps of a generation

class StepClock:
    """A ``generate`` hook that tells a store which step it is and installs it for the run."""

    def __init__(self, store: AttentionStore):
        self.store = store

    def __enter__(self):
        return self.store.__enter__()

    def __exit__(self, *exc):
        return self.store.__exit__(*exc)

    def before_step(self, i, t, latents, cond_embeddings):
        self.store.step = i
        return latents


def prompt_words(tokens: Tokens) -> list[str]:
    """The prompt's distinct words (letters, digits, ``'`` and ``-``) that cover whole tokens."""
    out = []
    for w in re.findall(r"[\w'-]+", tokens.text):
        if w.lower() in (x.lower() for x in out):
            continue
        try:
            token_span(tokens, w)
        except ValueError:
            continue
        out.append(w)
    return out


@dataclass
class AttentionMaps:
    """One generation's cross-attention maps (conditional branch, mean over heads) and its image.

    ``maps[layer][step]`` is (h, w, tokens) on the CPU, tokens up to the end-of-text token.
    """

    prompt: str
    tokens: Tokens
    maps: dict[str, dict[int, torch.Tensor]]
    resolutions: dict[str, int]
    image: object
    size: tuple[int, int]
    words: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(self.maps)

    @property
    def steps(self) -> list[int]:
        return sorted({s for m in self.maps.values() for s in m})

    def select(self, layer=None) -> list[str]:
        """Layer names for ``layer``: ``None`` (all), a pattern (``"mid"``, ``"up.1"``, a name) or a map side."""
        return match_layers([(n, self.resolutions[n]) for n in self.maps], layer)

    def token_maps(self, layer: str, step: int) -> torch.Tensor:
        """(h, w, tokens) of one layer at one step."""
        if step not in self.maps[layer]:
            raise KeyError(f"step {step} was not recorded; recorded steps: {self.steps}")
        return self.maps[layer][step]

    def word(self, word: str, layer=None, step: int | Sequence[int] | None = None,
             size: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor[H, W]: the word's attention (mean over its tokens, the layers and the steps chosen),
        each map upsampled bilinearly to ``size`` (default: the image size)."""
        pos = token_span(self.tokens, word)
        names = self.select(layer)
        steps = self.steps if step is None else [step] if isinstance(step, int) else list(step)
        size = size or self.size
        acc = torch.zeros(size)
        for n in names:
            for s in steps:
                m = self.token_maps(n, s)[..., pos].mean(-1)
                acc += F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return acc / (len(names) * len(steps))


def attention_maps(pipe, prompt: str, *, seed: int = 0, words: Sequence[str] | None = None, layers=None,
                   steps: int | None = None, record_steps: Iterable[int] | None = None,
                   **generate_kwargs) -> AttentionMaps:
    """Generate one image with :func:`reprolib.generate` and record its cross-attention maps.

    ``words``: which words the maps are for (default: every word of the prompt; checked up front).
    ``layers``: as :func:`select_layers` (default: all cross-attention layers). ``steps``: sampling
    steps, as ``generate``'s. ``record_steps``: which step indices to keep (default: all; each kept
    step costs layers × h·w × tokens floats). Other keyword arguments go to ``generate``
    (``boxes=``, ``layout=``, ``edits=``, ``guidance_scale=``, ``hooks=`` ...).
    """
    from .generate import generate

    if "output_type" in generate_kwargs:
        raise ValueError("attention_maps always returns a PIL image; do not pass output_type")
    if not isinstance(prompt, str) or not isinstance(seed, int):
        raise ValueError("attention_maps takes one prompt and one seed")
    cond = TextConditioning(pipe)
    toks = cond.tokenize(prompt)
    words = list(words) if words is not None else prompt_words(toks)
    for w in words:
        token_span(toks, w)  # a clear SpanError before spending a generation
    last = max((i for i, s in enumerate(toks.special) if not s), default=0) + 1  # keep the end-of-text token
    dh, dw = cond.default_size()
    height, width = generate_kwargs.get("height") or dh, generate_kwargs.get("width") or dw
    store = AttentionStore(pipe.unet, layers, rows="cond", batch=2, heads="mean", tokens=range(last + 1),
                           to_cpu=True, steps=record_steps, aspect=height / width)
    hooks = [StepClock(store), *generate_kwargs.pop("hooks", ())]
    image = generate(pipe, prompt, seed=seed, steps=steps, hooks=hooks, **generate_kwargs)
    maps = {n: {s: store.grid(n, s)[0, 0] for s in sorted(store.maps[n])} for n in store.layers if n in store.maps}
    res = {n: next(iter(m.values())).shape[1] for n, m in maps.items()}  # actual map width at this size
    return AttentionMaps(prompt, toks, maps, res, image, (height, width), words)


# ----------------------------------------------------------------------------- plots

def _normalised(m: torch.Tensor) -> torch.Tensor:
    m = m - m.min()
    return m / m.max() if m.max() > 0 else m


def _draw_boxes(ax, boxes, height: int, width: int, colour: str = "white") -> None:
    from matplotlib.patches import Rectangle

    if boxes and not isinstance(boxes[0], (tuple, list)):
        boxes = [boxes]  # one box given bare
    for x0, y0, x1, y1 in boxes or ():
        ax.add_patch(Rectangle((x0 * width, y0 * height), (x1 - x0) * width, (y1 - y0) * height, fill=False,
                               edgecolor=colour, linewidth=2))


def plot_overlay(maps: AttentionMaps, word: str, *, layer=None, step=None, boxes=None, ax=None,
                 alpha: float = 0.55, cmap: str = "jet", title: str | None = None):
    """The word's heat map (normalised to [0, 1]) over the image, with optional normalised boxes; a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(3.2, 3.2))
    h, w = maps.size
    ax.imshow(maps.image, extent=(0, w, h, 0))
    ax.imshow(_normalised(maps.word(word, layer=layer, step=step)).numpy(), cmap=cmap, alpha=alpha,
              extent=(0, w, h, 0))
    _draw_boxes(ax, boxes, h, w)
    ax.set_title(word if title is None else title, fontsize=9)
    ax.axis("off")
    return fig


def _columns(maps: AttentionMaps, by: str, max_steps: int) -> list[tuple[str, dict]]:
    if by == "step":
        steps = maps.steps
        if len(steps) > max_steps:  # evenly spaced, first and last included
            steps = [steps[round(i * (len(steps) - 1) / (max_steps - 1))] for i in range(max_steps)]
        return [(f"step {s}", {"step": s}) for s in dict.fromkeys(steps)]
    if by == "resolution":
        return [(f"{r}×{r}", {"layer": r}) for r in sorted(set(maps.resolutions[n] for n in maps.layers))]
    if by == "block":
        blocks = dict.fromkeys(".".join(n.split(".")[:2]) if not n.startswith("mid") else "mid_block"
                               for n in maps.layers)
        return [(b.replace("_blocks", "").replace("_block", ""), {"layer": b}) for b in blocks]
    if by == "layer":
        return [(n.replace("transformer_blocks", "tb").replace("attentions", "a"), {"layer": n})
                for n in maps.layers]
    raise ValueError(f"by must be 'block', 'resolution', 'layer' or 'step', not {by!r}")


def plot_grid(maps: AttentionMaps, words: Sequence[str] | None = None, *, by: str = "block",
              max_steps: int = 8, boxes: dict | None = None, cmap: str = "jet"):
    """Rows: words; columns: the average over everything, then per block/resolution/layer/step. A Figure."""
    import matplotlib.pyplot as plt

    words = list(words or maps.words)
    cols = [("all", {})] + _columns(maps, by, max_steps)
    fig, axes = plt.subplots(len(words), len(cols), figsize=(1.8 * len(cols), 1.8 * len(words)), squeeze=False)
    for r, word in enumerate(words):
        for c, (label, sel) in enumerate(cols):
            plot_overlay(maps, word, ax=axes[r, c], cmap=cmap, title=label if r == 0 else "",
                         boxes=(boxes or {}).get(word), **sel)
        axes[r, 0].text(-0.08, 0.5, word, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center")
    fig.tight_layout()
    return fig
