"""Text conditioning, one adapter per model family: the seam every chapter goes through.

SD-style (SD 1.5, SD 2.1, the shapes world): one CLIP text encoder; the UNet reads its last hidden
state. SDXL-style: CLIP-L and OpenCLIP-G; the UNet reads both *penultimate* states concatenated
(768 + 1280 = 2048), plus OpenCLIP-G's pooled projection and six "time ids" (sizes and crop).

Token-wise embeddings are kept *per encoder* (``clip_l``, ``openclip_g``, ...) because attribute
deltas live per encoder; :meth:`Embeddings.context` concatenates them for the UNet.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Tokens:
    """A tokenized prompt: ids (padded), token strings and character offsets (``(0, 0)`` for specials)."""

    text: str
    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    def table(self) -> str:
        """The prompt's non-padding tokens as 'position:token' (for error messages)."""
        last = max((i for i, s in enumerate(self.special) if not s), default=0) + 1
        return " ".join(f"{i}:{t}" for i, t in enumerate(self.tokens[: last + 1]))


@dataclass
class Embeddings:
    """Token-wise text states per encoder, each (batch, tokens, dim), and the pooled embedding.

    ``mask`` (batch, tokens): which token slots cross-attention may read, for models trained with the
    padding masked (:func:`padding_mask`); None for SD, SDXL and every model that reads all slots.
    ``keys``: the states cross-attention makes its *keys* from, where they differ from ``states`` (which
    then make only the values): an edit that reaches the values alone (``Edit.reach``); None: the same.
    """

    states: dict[str, torch.Tensor]
    pooled: torch.Tensor | None = None
    tokens: list[Tokens] = field(default_factory=list)
    mask: torch.Tensor | None = None
    keys: dict[str, torch.Tensor] | None = None

    def context(self) -> torch.Tensor:
        """What the UNet's cross-attention reads: the states concatenated along features."""
        return torch.cat(list(self.states.values()), dim=-1)

    def key_states(self) -> dict[str, torch.Tensor]:
        """The states the keys are made from (``keys``, else ``states``)."""
        return self.states if self.keys is None else self.keys

    def key_context(self) -> torch.Tensor | None:
        """What cross-attention makes its keys from where it differs from :meth:`context`, else None."""
        return None if self.keys is None else torch.cat(list(self.keys.values()), dim=-1)

    def clone(self) -> Embeddings:
        return Embeddings(
            {k: v.clone() for k, v in self.states.items()},
            None if self.pooled is None else self.pooled.clone(),
            list(self.tokens),
            self.mask,
            None if self.keys is None else {k: v.clone() for k, v in self.keys.items()},
        )

    def towards(self, other: Embeddings, w: float) -> Embeddings:
        """The states (1 − w)·self + w·other, token by token (pooled kept as self's, which edits leave alone)."""
        keys = None
        if self.keys is not None or other.keys is not None:
            mine, theirs = self.key_states(), other.key_states()
            keys = {k: torch.lerp(v, theirs[k], w) for k, v in mine.items()}
        return Embeddings(
            {k: torch.lerp(v, other.states[k], w) for k, v in self.states.items()},
            self.pooled,
            self.tokens,
            self.mask,
            keys,
        )

    @staticmethod
    def cat(items: list[Embeddings]) -> Embeddings:
        pooled = None if items[0].pooled is None else torch.cat([e.pooled for e in items])
        masks = [e.mask for e in items]
        if any(m is None for m in masks) and not all(m is None for m in masks):
            raise ValueError("cannot batch embeddings with and without a padding mask (made by different models?)")
        keys = None
        if any(e.keys is not None for e in items):  # the others' keys are made from their states
            keys = {k: torch.cat([e.key_states()[k] for e in items]) for k in items[0].states}
        return Embeddings(
            {k: torch.cat([e.states[k] for e in items]) for k in items[0].states},
            pooled,
            [t for e in items for t in e.tokens],
            None if masks[0] is None else torch.cat(masks),
            keys,
        )

    def __getitem__(self, i) -> Embeddings:
        sl = slice(i, i + 1) if isinstance(i, int) else i
        toks = self.tokens[sl] if self.tokens else []
        return Embeddings(
            {k: v[sl] for k, v in self.states.items()},
            None if self.pooled is None else self.pooled[sl],
            toks,
            None if self.mask is None else self.mask[sl],
            None if self.keys is None else {k: v[sl] for k, v in self.keys.items()},
        )


def padding_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(batch, tokens) 1 up to and including the first end-of-text token, 0 on the padding after it.

    Models trained with this mask (the shapes world v2) cannot park a caption's meaning in the padding
    slots, so each word's own token carries it. An empty caption keeps its start and end tokens.
    """
    ids = torch.as_tensor(ids)
    return (torch.arange(ids.shape[1], device=ids.device)[None] <= first_eos(ids, eos_id)[:, None]).long()


def first_eos(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(batch,) each row's first end-of-text position (the last slot where a truncated row has none)."""
    ids = torch.as_tensor(ids)
    is_eos = ids == eos_id
    return torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))


def reads_mask(ids: torch.Tensor, tokenizer, words) -> torch.Tensor:
    """(batch, tokens) 1 at the start token and at the whole-word tokens of ``words``, 0 elsewhere.

    For models trained to read the caption through a few words alone (the shapes world's nouns: each
    object's colour and size reach the UNet only through its noun, which the causal text encoder fills with
    them, as the attribute deltas assume). The start token is always read: it carries no caption, so an
    empty one, or a pixel no word describes, has a place to look. The tokenizer's end-of-text token among
    ``words`` reads the first end-of-text slot (the caption's summary), never the padding after it.
    """
    ids = torch.as_tensor(ids)
    eos = tokenizer.eos_token
    read_ids = tokenizer.convert_tokens_to_ids([w + "</w>" for w in words if w != eos])
    read = torch.isin(ids, torch.as_tensor(read_ids, device=ids.device))
    if eos in words:
        read[torch.arange(len(ids), device=ids.device), first_eos(ids, tokenizer.eos_token_id)] = True
    read[:, 0] = True
    return read.long()


def without_words(text: str, words) -> str:
    """``text`` with these whole words taken out (what a summary that must not know them is made from)."""
    drop = set(words)
    return " ".join(w for w in text.split() if w not in drop)


def with_summary(states: torch.Tensor, ids: torch.Tensor, summary: torch.Tensor, summary_ids, eos_id: int):
    """``states`` (batch, tokens, dim) with each row's first end-of-text state taken from ``summary``'s.

    The end-of-text token of a causal encoder sums up the whole caption. A model that reads it from a caption
    with some words taken out (``without_words``) learns what the summary says (how many objects, which
    shapes) while the words it leaves out reach the UNet only through their own tokens, so an edit of those
    tokens (an attribute delta) is not contradicted by it.
    """
    rows = torch.arange(len(states), device=states.device)
    out = states.clone()
    out[rows, first_eos(ids, eos_id).to(states.device)] = summary[
        rows, first_eos(summary_ids, eos_id).to(states.device)
    ]
    return out


def _encoder_name(text_encoder) -> str:
    dim = text_encoder.config.hidden_size
    return {768: "clip_l", 1024: "openclip_h", 1280: "openclip_g"}.get(dim, "clip")


class _KeysFrom(nn.Module):
    """A cross-attention layer's ``to_k`` that projects other token states than the values' (same shape)."""

    def __init__(self, to_k: nn.Module, states: torch.Tensor):
        super().__init__()
        self.to_k, self.states = to_k, states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.states.shape:
            raise RuntimeError(f"keys made from states {tuple(self.states.shape)} for a context {tuple(x.shape)}")
        return self.to_k(self.states.to(x.dtype))


@contextmanager
def keys_from(unet, states: torch.Tensor):
    """Every cross-attention layer makes its keys from ``states`` (its values from the context it is given).

    ``to_k`` is the one place every attention processor (diffusers' own, reprolib's) makes keys, so the
    swap works under recorders and guidance alike; each layer gets its own ``to_k`` back on exit.
    """
    layers = getattr(unet, "_reprolib_cross_attention", None)
    if layers is None:  # walking every module on each UNet call costs more than the swap itself
        layers = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
        unet._reprolib_cross_attention = layers
    for m in layers:
        m.to_k = _KeysFrom(m.to_k, states)
    try:
        yield
    finally:
        for m in layers:
            m.to_k = m.to_k.to_k


class TextConditioning:
    """Tokenize, encode per encoder and run the UNet, for SD-style and SDXL-style pipelines alike."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
        if self.family == "sdxl":
            self.encoders = {
                "clip_l": (pipe.tokenizer, pipe.text_encoder),
                "openclip_g": (pipe.tokenizer_2, pipe.text_encoder_2),
            }
        else:
            self.encoders = {_encoder_name(pipe.text_encoder): (pipe.tokenizer, pipe.text_encoder)}
        # a model trained with its padding masked, or reading a few words alone, must be sampled the same way
        # (its folder's reprolib.json says so)
        declared = getattr(pipe, "reprolib_defaults", None) or {}
        self.mask_padding = bool(declared.get("mask_padding", False))
        self.reads = list(declared.get("cross_attention_reads", []))
        self.summary_without = list(declared.get("summary_without", []))

    @property
    def dims(self) -> dict[str, int]:
        return {k: enc.config.hidden_size for k, (_, enc) in self.encoders.items()}

    @property
    def tokenizer(self):
        return next(iter(self.encoders.values()))[0]

    def fingerprint(self, n: int = 8) -> dict[str, list[float]]:
        """A few fixed entries of each encoder's token-embedding table (4 significant digits).

        Two trainings of the same architecture share dims but not these values; fp16/bf16 copies of
        one model agree to within rounding. Deltas store it to refuse weights they were not made for.
        """
        out = {}
        for name, (_, enc) in self.encoders.items():
            w = enc.get_input_embeddings().weight.detach().reshape(-1)
            idx = torch.linspace(0, w.numel() - 1, n).long().to(w.device)
            out[name] = [float(f"{v:.4g}") for v in w[idx].float().cpu().tolist()]
        return out

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def default_size(self) -> tuple[int, int]:
        s = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return s, s

    def tokenize(self, text: str, tokenizer=None) -> Tokens:
        tok = tokenizer or self.tokenizer
        out = tok(
            text, padding="max_length", truncation=True, max_length=tok.model_max_length, return_offsets_mapping=True
        )
        ids = out["input_ids"]
        specials = set(tok.all_special_ids)
        special = [i in specials and o == (0, 0) for i, o in zip(ids, out["offset_mapping"])]
        return Tokens(text, ids, tok.convert_ids_to_tokens(ids), [tuple(o) for o in out["offset_mapping"]], special)

    @torch.no_grad()
    def encode(self, texts: str | list[str]) -> Embeddings:
        """Token-wise states (and pooled embedding) exactly as the pipeline itself computes them."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        states, pooled = {}, None
        for name, (tok, enc) in self.encoders.items():
            ids = torch.tensor([self.tokenize(t, tok).ids for t in texts], device=enc.device)
            if self.family == "sdxl":  # SDXL reads the penultimate layer of both encoders
                out = enc(ids, output_hidden_states=True)
                states[name] = out.hidden_states[-2]
                pooled = out[0]  # the last encoder's projected pooled output (text_embeds)
            else:
                states[name] = enc(ids)[0]
                if self.summary_without:  # the end-of-text state made without these words (with_summary)
                    short = [self.tokenize(without_words(t, self.summary_without), tok).ids for t in texts]
                    short = torch.tensor(short, device=enc.device)
                    states[name] = with_summary(states[name], ids, enc(short)[0], short, tok.eos_token_id)
        tokens = [self.tokenize(t) for t in texts]
        mask = None
        ids = torch.tensor([t.ids for t in tokens], device=self.device)
        if self.reads:
            mask = reads_mask(ids, self.tokenizer, self.reads)
        elif self.mask_padding:
            mask = padding_mask(ids, self.tokenizer.eos_token_id)
        return Embeddings(states, pooled, tokens, mask)

    def encode_negative(self, negative: str | None, batch: int = 1) -> Embeddings:
        """The unconditional branch; SDXL uses zeros for an absent negative prompt, as its pipeline does."""
        if negative is None and self.family == "sdxl" and self.pipe.config.get("force_zeros_for_empty_prompt", True):
            e = self.encode([""] * batch)
            return Embeddings(
                {k: torch.zeros_like(v) for k, v in e.states.items()}, torch.zeros_like(e.pooled), e.tokens, e.mask
            )
        return self.encode([negative or ""] * batch)

    def added_cond(self, emb: Embeddings, height: int, width: int) -> dict | None:
        if self.family != "sdxl":
            return None
        # original size, crop top-left, target size: an uncropped image at the size asked for
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=emb.pooled.dtype, device=emb.pooled.device)
        return {"text_embeds": emb.pooled, "time_ids": ids.repeat(emb.pooled.shape[0], 1)}

    def unet(
        self, latents: torch.Tensor, t, emb: Embeddings, height: int | None = None, width: int | None = None, **kwargs
    ) -> torch.Tensor:
        """One UNet evaluation on these embeddings (batch of latents and embeddings must agree)."""
        if height is None:
            height, width = (s * self.pipe.vae_scale_factor for s in latents.shape[-2:])
        unet = self.pipe.unet
        dtype = next(unet.parameters()).dtype  # (unet.dtype walks every module: slow in a hot loop)
        ctx = emb.context().to(dtype)
        added = self.added_cond(emb, height, width)
        if added:
            added = {k: v.to(dtype) for k, v in added.items()}
        if emb.mask is not None:
            kwargs["encoder_attention_mask"] = emb.mask.to(latents.device)
        keys = emb.key_context()
        if keys is None:
            return unet(latents.to(dtype), t, encoder_hidden_states=ctx, added_cond_kwargs=added, **kwargs).sample
        with keys_from(unet, keys.to(dtype)):  # an edit that reaches the values alone (Edit.reach)
            return unet(latents.to(dtype), t, encoder_hidden_states=ctx, added_cond_kwargs=added, **kwargs).sample
