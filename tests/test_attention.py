"""Attention processors, stores (reprolib.attention) and maps (reprolib.maps) on the tiny random pipelines."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

from reprolib.attention import (  # noqa: E402
    AttentionStore,
    ProbsProcessor,
    cross_attention_layers,
    default_layers,
    grid_shape,
    record_attention,
    select_layers,
)
from reprolib.conditioning import Embeddings, TextConditioning  # noqa: E402
from reprolib.generate import generate, initial_latents  # noqa: E402
from reprolib.maps import attention_maps  # noqa: E402
from reprolib.plots import plot_grid, plot_overlay  # noqa: E402
from reprolib.tokens import SpanError, token_span  # noqa: E402

PROMPT = "a red circle and a blue square"


class Always:
    """A listener that only forces the explicit path."""

    active, edits = True, False

    def __call__(self, name, probs):
        return None


def _cfg_pass(pipe, prompt=PROMPT, seed=0):
    """One UNet call on a CFG batch (unconditional first), as generate makes it."""
    cond = TextConditioning(pipe)
    emb = Embeddings.cat([cond.encode_negative(None, 1), cond.encode([prompt])])
    pipe.scheduler.set_timesteps(3)
    t = pipe.scheduler.timesteps[0]
    x = initial_latents(pipe, [seed], 64, 64)
    return cond, emb, t, x


def test_only_selected_layers_change_and_all_are_restored(any_tiny):
    unet = any_tiny.unet
    before = dict(unet.attn_processors)
    mid = select_layers(unet, "mid")
    assert mid and all(n.startswith("mid_block.") for n in mid)
    with record_attention(unet, "mid"):
        inside = unet.attn_processors
        for key, proc in inside.items():
            if key.removesuffix(".processor") in mid:
                assert isinstance(proc, ProbsProcessor)
            else:  # untouched: the very same default SDPA processor object, attn1 included
                assert proc is before[key] and type(proc) is AttnProcessor2_0
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_nested_stores_share_a_processor_and_unwind(sd15):
    unet = sd15.unet
    before = dict(unet.attn_processors)
    cond, emb, t, x = _cfg_pass(sd15)
    with record_attention(unet) as outer:
        with record_attention(unet, "mid") as inner:
            cond.unet(torch.cat([x, x]), t, emb)
            proc = unet.attn_processors[inner.layers[0] + ".processor"]
            assert proc.listeners == [outer, inner]
        assert set(inner.maps) == set(inner.layers) and set(outer.maps) == set(outer.layers)
        assert all(isinstance(unet.attn_processors[n + ".processor"], ProbsProcessor) for n in outer.layers)
        assert unet.attn_processors[inner.layers[0] + ".processor"].listeners == [outer]
    assert all(unet.attn_processors[k] is before[k] for k in before)


def test_recording_leaves_images_unchanged(any_tiny):
    plain = generate(any_tiny, PROMPT, seed=3, steps=2, output_type="np")
    with record_attention(any_tiny.unet) as store:
        recorded = generate(any_tiny, PROMPT, seed=3, steps=2, output_type="np")
    assert store.maps, "nothing was recorded"
    assert abs(plain - recorded).max() < 1e-5


@pytest.mark.parametrize("case", ["self", "cross", "cross-2d-mask"])
def test_explicit_path_equals_sdpa_on_general_attention(case):
    """4-D input, group norm, residual, rescale, cross-attention with a mask: same as AttnProcessor2_0."""
    cross = case != "self"
    torch.manual_seed(0)
    attn = Attention(
        query_dim=8,
        heads=2,
        dim_head=4,
        norm_num_groups=4,
        residual_connection=True,
        rescale_output_factor=2.0,
        cross_attention_dim=6 if cross else None,
        cross_attention_norm="layer_norm" if cross else None,
    ).eval()
    h = torch.randn(2, 8, 3, 5)
    ctx = torch.randn(2, 7, 6) if cross else None
    mask = None
    if cross:  # (batch, 1, keys) as the UNet passes it, or (batch, keys)
        mask = torch.zeros(2, 7) if case == "cross-2d-mask" else torch.zeros(2, 1, 7)
        mask[0, ..., -2:] = -1e4  # the first sample ignores its last two tokens
    proc = ProbsProcessor("x")
    seen = []
    proc.listeners.append(Always())
    proc.listeners.append(type("Rec", (Always,), {"__call__": lambda s, n, p: seen.append(p)})())
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, h, ctx, mask)
        out = proc(attn, h, ctx, mask)
    assert out.shape == h.shape
    assert torch.allclose(out, ref, atol=1e-5)
    probs = seen[0]
    assert probs.shape == (2, 2, 15, 7 if cross else 15)
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    if cross:
        assert probs[0, :, :, -2:].max() < 1e-3 and probs[1, :, :, -2:].min() > 0


def test_maps_have_expected_shapes_and_sum_to_one(any_tiny):
    cond, emb, t, x = _cfg_pass(any_tiny)
    unet = any_tiny.unet
    side = dict(cross_attention_layers(unet, latent_size=x.shape[-1]))
    with record_attention(unet, rows="cond") as store, torch.no_grad():
        cond.unet(torch.cat([x, x]), t, emb)
    assert list(store.maps) == store.layers or set(store.maps) == set(store.layers)
    for name in store.layers:
        heads = unet.get_submodule(name).heads
        s = side[name]
        assert store.get(name).shape == (1, heads, s * s, 77)
        assert store.grid(name).shape == (1, heads, s, s, 77)
        assert store.flat(name).shape == (heads, s * s, 77)
        assert torch.allclose(store.get(name).sum(-1), torch.ones(()), atol=1e-5)
        assert not store.get(name).requires_grad


def test_store_keeps_only_the_batch_asked_for(sd15):
    cond, emb, t, x = _cfg_pass(sd15)
    with record_attention(sd15.unet, "mid", batch=2, rows=[0]) as store, torch.no_grad():
        cond.unet(x, t, emb[1])  # a conditional-only call: ignored by a store for CFG batches
        assert not store.maps
        store.step = 5
        cond.unet(torch.cat([x, x]), t, emb)
    name = store.layers[0]
    assert list(store.maps[name]) == [5] and store.get(name).shape[0] == 1


def test_gradients_reach_latents(any_tiny):
    cond, emb, t, x = _cfg_pass(any_tiny)
    x = x.clone().requires_grad_(True)
    pos = token_span(emb.tokens[1], "circle")
    with record_attention(any_tiny.unet, "default", keep_grad=True, rows="cond") as store:
        cond.unet(torch.cat([x, x]), t, emb)
        loss = sum(store.grid(n)[..., : store.grid(n).shape[2] // 2, :, pos].sum() for n in store.layers)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_layer_selection(sd15, sdxl):
    names = dict(cross_attention_layers(sd15.unet))
    assert [n for n in names if n.startswith("up_blocks.1.")] == select_layers(sd15.unet, "up.1")
    assert select_layers(sd15.unet, 16) == [n for n, r in names.items() if r == 16]
    assert select_layers(sd15.unet, ["mid", "up.1"]) == default_layers(sd15.unet)
    assert set(select_layers(sd15.unet)) == set(names)
    assert all(n.endswith("attn2") for n in names)  # self-attention (attn1) is never a cross-attention layer
    with pytest.raises(ValueError, match="up.7"):
        select_layers(sd15.unet, "up.7")
    xl = default_layers(sdxl.unet)
    assert xl and all(n.startswith(("mid_block.", "up_blocks.0.")) for n in xl)
    assert any(n.startswith("up_blocks.0.") for n in xl) and any(n.startswith("mid_block.") for n in xl)


def test_shapes_world_layout_and_resolution_selection():
    from reprolib.shapes.model import build_unet

    unet = build_unet()
    sides = dict(cross_attention_layers(unet))
    assert sorted(set(sides.values())) == [4, 8, 16]
    # mid is 4×4, too coarse for a box: the default becomes every layer at up_blocks.1's 8×8
    assert default_layers(unet) == select_layers(unet, 8)
    eight = select_layers(unet, 8)
    assert eight and {n.split(".")[0] for n in eight} == {"down_blocks", "up_blocks"}
    assert all(sides[n] == 8 for n in eight)


def test_grid_shape_handles_non_square():
    assert grid_shape(32, aspect=0.5) == (4, 8)
    with pytest.raises(ValueError):
        grid_shape(31, aspect=1.0)


def test_attention_maps_per_word_layer_step(any_tiny):
    maps = attention_maps(any_tiny, PROMPT, seed=1, steps=2)
    assert maps.words == ["a", "red", "circle", "and", "blue", "square"]
    assert maps.steps == [0, 1]
    assert set(maps.layers) == set(select_layers(any_tiny.unet))
    plain = generate(any_tiny, PROMPT, seed=1, steps=2, output_type="np")
    import numpy as np

    assert abs(np.asarray(maps.image, dtype=np.float32) / 255 - plain).max() <= 1 / 255 + 1e-6
    m = maps.word("circle")
    assert m.shape == (64, 64) and torch.isfinite(m).all() and m.min() >= 0
    first = maps.layers[0]
    assert maps.word("circle", layer=first, step=0).shape == (64, 64)
    native = maps.token_maps(first, 0)
    s = maps.resolutions[first]
    assert native.shape[:2] == (s, s)
    # one layer at one step at its own size is exactly its stored map (mean over the word's tokens)
    pos = token_span(maps.tokens, "blue square")
    assert torch.allclose(
        maps.word("blue square", layer=first, step=0, size=(s, s)), native[..., pos].mean(-1), atol=1e-6
    )
    with pytest.raises(KeyError):
        maps.word("circle", step=7)


def test_attention_maps_checks_words_and_record_steps(sd15):
    with pytest.raises(SpanError):
        attention_maps(sd15, PROMPT, words=["triangle"], steps=2)
    maps = attention_maps(sd15, PROMPT, steps=3, record_steps=[1], layers="mid", words=["red"])
    assert maps.steps == [1] and all(n.startswith("mid_block.") for n in maps.layers)


def test_plots_return_figures(sd15):
    import matplotlib.pyplot as plt

    maps = attention_maps(sd15, PROMPT, steps=2)
    fig = plot_overlay(maps, "circle", boxes=(0.0, 0.0, 0.5, 0.5))
    assert isinstance(fig, matplotlib.figure.Figure)
    for by, n_cols in [("block", 1 + 3), ("step", 1 + 2), ("resolution", 1 + 2)]:
        grid = plot_grid(maps, ["circle", "square"], by=by)
        assert len(grid.axes) == 2 * n_cols
        plt.close(grid)
    with pytest.raises(ValueError):
        plot_grid(maps, by="colour")
    plt.close("all")


def test_store_rejects_bad_options(sd15):
    with pytest.raises(ValueError):
        AttentionStore(sd15.unet, heads="sum")
