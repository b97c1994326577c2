r"""The attention processor that makes cross-attention probabilities visible to listeners.

diffusers' default processor (``AttnProcessor2_0``) calls fused SDPA, which never materialises the
attention probabilities. :class:`ProbsProcessor` computes them explicitly, softmax(QKᵀ·scale), for
the *selected* layers only, hands them to :class:`~reprolib.protocols.AttentionListener`\ s
(recorders such as :class:`~reprolib.attention.store.AttentionStore`, editors such as forward layout
guidance) and is otherwise the default computation; every other layer keeps its processor untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from ..protocols import AttentionListener


class ProbsProcessor:
    """``AttnProcessor2_0``'s computation with the probabilities made explicit and passed to listeners.

    Listeners (:class:`~reprolib.protocols.AttentionListener`) get ``(name, probs)``, probs (batch, heads,
    queries, keys); editors (``edits = True``) run first, so observers see what the layer used. With no
    active listener the layer runs diffusers' own SDPA processor.
    """

    def __init__(self, name: str):
        self.name = name
        self.listeners: list[AttentionListener] = []
        self.fallback = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
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
        for lis in sorted(live, key=lambda x: not x.edits):
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


def attach(unet, names: Iterable[str], listener: AttentionListener) -> dict:
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


def detach(unet, listener: AttentionListener, replaced: dict) -> None:
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
