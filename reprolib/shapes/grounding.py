"""Training-time levers that tie each object to its own noun token (shapes world v3 candidate, issue #13).

* **Grounding loss** (as TokenCompose, Wang et al. 2024, does for SD with segmentation masks): in every
  cross-attention layer, each noun's attention should fall on its object. The loss is the same energy
  layout guidance lowers at sampling time, (1 − Σ_object A / Σ A)², here with the renderer's exact
  soft masks, averaged over the objects and layers of the batch. ``--grounding-max-t`` holds it only at
  the less noisy timesteps (``--grounding-min-t``: the noisier ones), ``--grounding-layers`` only in some
  layers (measured in session 14: neither gives the object count back); ``--grounding-through queries``
  lets its gradient move only the queries (measured in session 15: on the 16×16 layers at 0.01 that
  localises at almost no count cost, the count being lost through the keys; on every layer at 0.05 it
  costs far more).
* **Attribute dropout**: for a share of the captions, the colour and size words are hidden from the
  UNet's cross-attention (the causal text encoder still reads them), so the UNet learns to draw an
  object from its noun token alone, the token an attribute delta edits.
* **Exclusive pixels** (with the grounding loss, ``--exclusive``): each object's pixels are held off the other
  objects' nouns (``exclusive_loss``), the pixel side of the same masks, in the grounded layers or, with
  ``--exclusive-layers``, some of them. The grounding loss alone lets a
  bystander's pixels read the subject's noun as long as that noun's attention is mostly on its own object.

* **Token swap**: for a share of the captions, one object's colour (and its size, when the caption names
  one) is changed in the picture, and only its *noun token* is taken from the changed caption; the
  adjectives still name the old attribute. The UNet learns that a noun token from another context
  changes its own object, and only it: the property an attribute delta relies on, taught with real tokens
  of real captions, never with a delta.

* **Late swap** (with the token swap): for a share of the swapped captions, the noisy latent still shows
  the *old* picture (at a timestep past ``LATE_FROM``) while the target is the changed one, as when a
  delayed edit meets a half-formed picture. The UNet learns to redraw the object its noun names in place
  (measured in ``checkpoints/shapes_v3/README.md``: it does, but then leaks size edits onto other objects).

* **Size naming** (with the token swap): for a share of the swapped objects whose caption names no size, the
  changed caption gets a size word and the picture draws the object in that bin. A size delta added to an
  unsized noun (as in "a red circle and a green square") is then a move the UNet has seen.

* **Adjective grounding** (with the grounding loss): an object's colour and size words are held to its
  mask too. Without it, a model trained with the token swap learns that the adjectives may be wrong and
  spreads their attention, and layout guidance on a phrase like "red circle" then never gets its energy
  under the threshold (every iteration of every guided step runs).

* **Short deltas** (with the token swap): the swap's change of a noun token, |new − old|, is held under a
  share of the token's own length (``change_penalty``). Without it a colour delta is longer than the noun
  token it edits (9.6 against 6.3 on swap 0.5), so an edited token, and more so a stacked edit, keeps little
  of the noun it started from.

* **Stretched nouns**: for a share of the captions, one noun token's state is made longer (× a uniform 1 to
  ``--stretch-max``) in what cross-attention reads, the picture unchanged. An attribute delta adds length: the
  stacked size +2 & colour +1 edit doubles the noun token's, and on a grounded model the genuine "big blue
  circle" token stretched to that length deletes the other object as the edit does, while the edit shrunk to
  the genuine length keeps it (session 23). The UNet learns that a longer noun names the same one object.

All are off unless ``python -m reprolib.shapes.train`` is given ``--grounding`` / ``--attribute-dropout`` /
``--token-swap`` / ``--swap-late`` / ``--swap-name-size`` / ``--ground-adjectives`` / ``--short-deltas`` /
``--stretch-nouns`` / ``--exclusive``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import world
from .tokenizer import EOS

MAX_OBJECTS = 3
MASK_RES = 16  # the UNet's largest attention maps; smaller ones are average-pooled from it
SHORT_WEIGHT = 0.05  # the short-delta penalty beside the diffusion loss, as the grounding loss
LATE_FROM = 300  # late swaps only at t ≥ this: below it the old picture is too clear to redraw in a few steps
SIZE_BINS = {"small": (world.SIZE_RANGE[0], world.SMALL_BELOW), "big": (world.BIG_ABOVE, world.SIZE_RANGE[1])}


def _words(ids: torch.Tensor, tokenizer) -> list[list[str]]:
    return [[t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(row.tolist())] for row in ids]


def _word_ids(tokenizer, words) -> dict[str, int]:
    """Each whole word's token id (the shapes vocabulary has one token per word)."""
    vocab = tokenizer.get_vocab()
    return {w: vocab[w + "</w>"] for w in words}


def noun_targets(scenes: list[world.Scene], ids: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene, each object's noun position in ``ids`` (−1 where none) and its coverage at 16×16.

    The caption names the objects in order, so the k-th object's noun is the caption's k-th shape word (a
    colour may repeat, mix v4). Returns positions (n, 3) long and masks (n, 3, 16, 16) float16.
    """
    pos = torch.full((len(scenes), MAX_OBJECTS), -1, dtype=torch.long)
    masks = torch.zeros(len(scenes), MAX_OBJECTS, MASK_RES, MASK_RES, dtype=torch.float16)
    for i, (scene, words) in enumerate(zip(scenes, _words(ids, tokenizer))):
        if not scene.caption:
            continue
        nouns = [j for j, w in enumerate(words) if w in world.SHAPES]
        for k, obj in enumerate(scene.objects):
            n = nouns[k] if k < len(nouns) else -1
            if n < 1 or words[n] != obj.shape or words[n - 1] != obj.colour:
                raise ValueError(f"caption {scene.caption!r}: expected {obj.colour!r} {obj.shape!r} as object {k + 1}")
            pos[i, k] = n
            masks[i, k] = _mask(obj)
    return pos, masks


def phrase_targets(positions: torch.Tensor, ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """Each object's words: (n, 3·objects) positions, its nouns (``positions``), then their colour words,
    then their size words (−1 where none), in the order ``masks.repeat(1, 3, 1, 1)`` gives their masks."""
    noun = positions >= 0
    colour = torch.where(noun, positions - 1, -1)
    size_ids = torch.tensor(list(_word_ids(tokenizer, SIZE_BINS).values()))
    before = torch.gather(ids, 1, (positions - 2).clamp_min(0))
    size = torch.where(noun & (positions >= 2) & torch.isin(before, size_ids), positions - 2, -1)
    return torch.cat([positions, colour, size], 1)


def _mask(obj: world.Obj) -> torch.Tensor:
    pool = world.RES // MASK_RES
    cov = world.coverage(obj).reshape(MASK_RES, pool, MASK_RES, pool).mean(axis=(1, 3))
    return torch.from_numpy(cov.astype(np.float16))


@dataclass
class Swapped:
    """Token-swapped rows of a batch: the changed captions' ids, pictures and object masks, and
    which noun position of each row takes its token from the changed caption."""

    rows: torch.Tensor  # (n,) indices into the batch
    ids: torch.Tensor  # (n, tokens)
    images: torch.Tensor  # (n, 3, 64, 64) in [-1, 1]
    masks: torch.Tensor  # (n, 3, 16, 16)
    noun: torch.Tensor  # (n,) token position
    new_noun: torch.Tensor | None = None  # (n,) its position in the changed caption, where a word was added


def _changed(scene: world.Scene, k: int, size_word: str | None, rng: np.random.Generator) -> world.Obj:
    """Object ``k`` in a colour no other object has, and in the other size bin when ``size_word`` is given
    (keeping its size if the new one would overlap a neighbour)."""
    obj, others = scene.objects[k], [o for i, o in enumerate(scene.objects) if i != k]
    free = [c for c in world.PALETTE if c not in {o.colour for o in scene.objects}]
    new = replace(obj, colour=str(rng.choice(free)))
    if size_word is not None:
        flipped = replace(new, size=float(rng.uniform(*SIZE_BINS["big" if size_word == "small" else "small"])))
        inside = flipped.size + 1 <= min(obj.cx, obj.cy, world.RES - obj.cx, world.RES - obj.cy)
        if inside and not any(world.overlaps(flipped, o) for o in others):
            new = flipped
    return new


def _named(row: torch.Tensor, at: int, word: int) -> torch.Tensor:
    """``row`` with ``word`` inserted at ``at``, the rest shifted right into the padding."""
    if row[-1] != row[-2]:
        raise ValueError("no padding left to insert a size word into; raise the tokenizer's MAX_LENGTH")
    return torch.cat([row[:at], row.new_tensor([word]), row[at:-1]])


def swap_tokens(
    scenes: list[world.Scene],
    ids: torch.Tensor,
    positions: torch.Tensor,
    tokenizer,
    p: float,
    rng,
    name_size: float = 0.0,
) -> Swapped | None:
    """For a share ``p`` of the captioned rows, one object's colour (and size word) changed (see module doc).

    ``ids``/``positions``: the batch's token ids and ``noun_targets`` positions; ``rng``: numpy Generator.
    ``name_size``: the share of changed objects whose caption names no size that get one (a random bin, the
    object drawn in it), the word added before the colour: a size edit on an unsized noun, taught.
    """
    word_id = _word_ids(tokenizer, (*world.PALETTE, *SIZE_BINS))
    rows, new_ids, images, masks, nouns, new_nouns = [], [], [], [], [], []
    for i, scene in enumerate(scenes):
        if not scene.caption or rng.random() >= p:
            continue
        k = int(rng.integers(len(scene.objects)))
        noun = int(positions[i, k])
        before = tokenizer.convert_ids_to_tokens(int(ids[i, noun - 2]))[: -len("</w>")]
        # drawn only when asked, so earlier recipes keep their random stream
        named = before not in SIZE_BINS and name_size > 0 and rng.random() < name_size
        wanted = str(rng.choice(list(SIZE_BINS))) if named else None
        # _changed moves the object out of the bin it is given: the named one, or the one opposite the wanted one
        flip_from = before if before in SIZE_BINS else {"big": "small", "small": "big"}.get(wanted)
        obj = _changed(scene, k, flip_from, rng)
        added = named and obj.size_word == wanted  # it fitted in the wanted bin: the caption now names it
        row = ids[i].clone()
        row[noun - 1] = word_id[obj.colour]
        if added:
            row = _named(row, noun - 1, word_id[wanted])
        elif not named and obj.size_word != scene.objects[k].size_word:
            row[noun - 2] = word_id[obj.size_word]
        objects = tuple(obj if j == k else o for j, o in enumerate(scene.objects))
        rows.append(i), new_ids.append(row), nouns.append(noun), new_nouns.append(noun + added)
        images.append(torch.from_numpy(world.render(objects)).permute(2, 0, 1).float() / 127.5 - 1)
        masks.append(
            torch.stack(
                [_mask(o) for o in objects]
                + [torch.zeros(MASK_RES, MASK_RES, dtype=torch.float16)] * (MAX_OBJECTS - len(objects))
            )
        )
    if not rows:
        return None
    return Swapped(
        torch.tensor(rows),
        torch.stack(new_ids),
        torch.stack(images),
        torch.stack(masks),
        torch.tensor(nouns),
        torch.tensor(new_nouns),
    )


def swap_states(
    states: torch.Tensor, swapped_states: torch.Tensor, swapped: Swapped, reach: torch.Tensor | None = None
) -> torch.Tensor:
    """``states`` (batch, tokens, dim) with each swapped row's noun token taken from the changed caption.

    ``reach`` (n,) ≥ 1: go that far along old → new instead (1 = the new token itself). Beyond 1 the token is
    longer than any caption makes it, as a stacked or extrapolated edit makes it, and the picture is still
    the changed one: the UNet learns that going further along an attribute never means another object.
    """
    out = states.clone()
    old, new = swapped_nouns(states, swapped_states, swapped)
    out[swapped.rows, swapped.noun] = new if reach is None else old + reach[:, None] * (new - old)
    return out


def swapped_nouns(
    states: torch.Tensor, swapped_states: torch.Tensor, swapped: Swapped
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each swapped row's noun token (n, dim) in its own caption and in the changed one."""
    new_noun = swapped.noun if swapped.new_noun is None else swapped.new_noun
    return states[swapped.rows, swapped.noun], swapped_states[torch.arange(len(swapped.rows)), new_noun]


def change_ratio(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """|new − old| ÷ |old| per row: how far a swap moves a noun token, in the token's own length."""
    return (new - old).norm(dim=-1) / old.norm(dim=-1).detach().clamp_min(1e-6)


def change_penalty(ratio: torch.Tensor, limit: float) -> torch.Tensor:
    """mean(relu(ratio − limit)²): zero once every swap moves its token by at most ``limit`` of its length."""
    return F.relu(ratio - limit).pow(2).mean()


def late_target(xt: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise ε that makes ``xt`` a noising of ``x0`` at ``t``: (x_t − √ᾱ·x0) / √(1 − ᾱ).

    With ``xt`` made from another picture, a UNet trained to predict it learns to denoise towards ``x0``.
    """
    a = alphas_cumprod.to(xt.device)[t].float().view(-1, *[1] * (xt.dim() - 1))
    return (xt - a.sqrt() * x0) / (1 - a).sqrt()


# which words cross-attention may read (--reads): the start token is always read; "all" masks nothing beyond
# the padding. The end-of-text token (EOS) summarises the whole caption: "all" and "nouns+summary" read it.
READS = {
    "all": None,
    "nouns": world.SHAPES,
    "nouns+summary": (*world.SHAPES, EOS),
    "no-attributes": ("a", "and", ",", *world.SHAPES),
}
# the words the end-of-text summary is made without (--summary; conditioning.with_summary)
SUMMARIES = {"full": None, "no-attributes": (*world.PALETTE, *SIZE_BINS)}


def attribute_positions(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """(n, tokens) bool: the colour and size words of each caption."""
    attr = {*world.PALETTE, *SIZE_BINS}
    return torch.tensor([[w in attr for w in row] for row in _words(ids, tokenizer)])


def drop_attributes(mask: torch.Tensor, attributes: torch.Tensor, p: float, generator: torch.Generator):
    """``mask`` (batch, tokens) with the attribute words zeroed for a random share ``p`` of the rows."""
    rows = torch.rand(mask.shape[0], generator=generator) < p
    return mask * ~(attributes & rows[:, None])


def noun_positions(ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """(n, tokens) bool: the shape nouns of each caption."""
    return torch.tensor([[w in world.SHAPES for w in row] for row in _words(ids, tokenizer)])


def stretch_nouns(states: torch.Tensor, nouns: torch.Tensor, p: float, high: float, generator: torch.Generator):
    """``states`` (batch, tokens, dim) with, in a random share ``p`` of the rows, one noun's state × U(1, high)."""
    n = states.shape[0]
    rows = (torch.rand(n, generator=generator) < p) & nouns.any(1)
    pick = torch.multinomial(nouns.float() + 1e-9, 1, generator=generator)[:, 0]  # one noun per row
    factor = 1 + (high - 1) * torch.rand(n, generator=generator)
    scale = torch.ones(states.shape[:2])
    scale[torch.arange(n)[rows], pick[rows]] = factor[rows]
    return states * scale[..., None].to(states.dtype)


# which cross-attention layers the grounding loss holds (by the name prefixes it skips): every one; those at
# 16×16 and 8×8 (the ones #13's localisation bar names), leaving the 4×4 mid block free to plan the whole
# picture; or the 16×16 ones alone (plain training already localises at 8×8), leaving the planning layers free;
# or those and the last 8×8 up layer, the one guided layer the 16×16 grounding leaves loose (session 27)
GROUNDED_LAYERS = {
    "all": (),
    "outer": ("mid_block",),
    "16x16": ("mid_block", "down_blocks.1", "up_blocks.1"),
    "16x16+last-8x8": ("mid_block", "down_blocks.1", "up_blocks.1.attentions.0"),
}


def held_rows(t: torch.Tensor, low: int | None, high: int | None) -> torch.Tensor | None:
    """The batch rows the grounding terms hold: timesteps in [``low``, ``high``); None (every row) without limits."""
    if low is None and high is None:
        return None
    rows = torch.ones(t.shape, dtype=torch.bool, device=t.device)
    if low is not None:
        rows &= t >= low
    if high is not None:
        rows &= t < high
    return rows


def layers_within(inner: str, outer: str) -> bool:
    """Whether every layer ``GROUNDED_LAYERS[inner]`` holds is one ``GROUNDED_LAYERS[outer]`` holds too."""
    return all(any(s.startswith(e) for e in GROUNDED_LAYERS[inner]) for s in GROUNDED_LAYERS[outer])


def held_maps(maps: dict[str, torch.Tensor], layers: str) -> dict[str, torch.Tensor]:
    """The maps of the layers ``GROUNDED_LAYERS[layers]`` holds."""
    return {n: p for n, p in maps.items() if not n.startswith(GROUNDED_LAYERS[layers])}


# which side of each grounded layer the grounding loss's gradient reaches: both; the keys alone (the layer's
# to_k and the text states; the picture's features left to the diffusion loss); or the queries alone (to_q
# and, through the picture's features, the layers below; the layer's own keys untouched); or the UNet alone
# (both projections and the features, the text states read as constants)
GROUNDING_THROUGH = ("both", "keys", "queries", "unet")


@contextmanager
def cross_attention_probs(unet, skip: tuple[str, ...] = (), through: str = "both"):
    """Collect every cross-attention layer's probabilities, with their graph, while the UNet runs.

    A forward hook recomputes them from the layer's own projections with diffusers' ``get_attention_scores``
    (the training step keeps its fast fused attention). Yields a dict layer → (batch, heads, queries, tokens).
    (``reprolib.attention`` records maps for the method; this unit sits below it.) ``skip``: name prefixes of
    layers left out; ``through``: one of ``GROUNDING_THROUGH``, the side the maps' graph keeps.
    """
    if through not in GROUNDING_THROUGH:
        raise ValueError(f"through={through!r}: choose one of {GROUNDING_THROUGH}")
    maps: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(mod, args, kwargs, out):
            h = args[0] if args else kwargs["hidden_states"]
            enc, bias = kwargs["encoder_hidden_states"], kwargs.get("attention_mask")
            enc = enc.detach() if through == "unet" else enc
            q, k = mod.head_to_batch_dim(mod.to_q(h)), mod.head_to_batch_dim(mod.to_k(enc))
            if mod.norm_k is not None:  # a key-normalised model (model.normalise_keys) attends as it samples
                k = mod.norm_k(k)
            if through == "keys":
                q = q.detach()
            elif through == "queries":
                k = k.detach()
            if bias is not None:
                bias = mod.prepare_attention_mask(bias, enc.shape[1], h.shape[0])
            p = mod.get_attention_scores(q, k, bias)
            maps[name] = p.view(h.shape[0], mod.heads, *p.shape[1:])

        return record

    handles = [
        m.register_forward_hook(hook(n), with_kwargs=True)
        for n, m in unet.named_modules()
        if getattr(m, "is_cross_attention", False) and not n.startswith(skip)
    ]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def _word_maps(maps: dict[str, torch.Tensor], positions: torch.Tensor, masks: torch.Tensor):
    """Per layer: (the words' attention, their objects' masks pooled to the layer's grid), each (batch, queries,
    words); a missing word (position < 0) reads token 0, left for the caller's ``valid`` to drop."""
    idx = positions.clamp_min(0)
    for p in maps.values():
        p = p.float().mean(1)  # (batch, queries, tokens)
        side = int(round(p.shape[1] ** 0.5))
        a = torch.gather(p, 2, idx[:, None, :].expand(-1, p.shape[1], -1))
        yield a, F.adaptive_avg_pool2d(masks.float(), side).flatten(2).transpose(1, 2)


def grounding_loss(
    maps: dict[str, torch.Tensor], positions: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over layers and objects of (1 − attention inside the object ÷ all its attention)².

    ``maps``: layer → (batch, heads, h·w, tokens) attention probabilities (with their graph). ``positions``
    (batch, k·objects) may hold k words per object, as ``phrase_targets`` gives, each held to its object's mask.
    ``rows``: (batch,) bool, the rows held (default all; ``--grounding-max-t`` leaves the noisiest out).
    """
    masks = masks.repeat(1, positions.shape[1] // masks.shape[1], 1, 1)
    valid = positions >= 0 if rows is None else (positions >= 0) & rows[:, None]
    if not valid.any():
        return torch.zeros(())
    total = 0.0
    for a, m in _word_maps(maps, positions, masks):
        inside = (a * m).sum(1) / a.sum(1).clamp_min(1e-8)
        total = total + ((1 - inside) ** 2 * valid).sum() / valid.sum()
    return total / len(maps)


def exclusive_loss(
    maps: dict[str, torch.Tensor], positions: torch.Tensor, masks: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over layers and objects of the other nouns' attention on each object's own pixels.

    The pixel side of grounding: ``grounding_loss`` asks where a noun's attention goes, this asks which nouns
    an object's pixels read. A values-only edit of one noun changes each pixel by its attention to that noun,
    so attention from a bystander's pixels to the subject's noun is what moves the bystander (measured in
    ``checkpoints/shapes_v3/README.md``, session 29). A pixel inside both objects' pooled masks is not held
    against either.
    ``positions`` (batch, objects), ``masks`` (batch, objects, H, W), ``rows`` as ``grounding_loss``.
    """
    valid = positions >= 0 if rows is None else (positions >= 0) & rows[:, None]
    pairs = valid[:, :, None] & valid[:, None, :] & ~torch.eye(positions.shape[1], dtype=torch.bool)
    if not pairs.any():
        return torch.zeros(())
    total = 0.0
    for a, m in _word_maps(maps, positions, masks):
        # [b, k, j]: noun j's attention on object k's pixels that are not j's, per unit of k's area
        other = torch.einsum("bqk,bqj->bkj", m, a * (1 - m)) / m.sum(1).clamp_min(1e-8)[:, :, None]
        total = total + (other * pairs).sum() / pairs.sum()
    return total / len(maps)
