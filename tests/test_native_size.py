"""The true SD 1.5 / SD 2.1 / SDXL architectures with random weights, on CPU: what tiny configs cannot show.

Counts, layer layouts and map sizes at native resolution use the meta device (shapes without memory or
compute); real numbers only where the point needs them: the SDXL encoders (the 34 original deltas, pooled
embedding, time ids), one SD 2.1 UNet pass at reduced resolution, and the half-precision paths, which run on
tiny pipelines. Big models are freed at the end of the test (or of the module, for the shared SDXL encoders).
"""

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from reprolib.architectures import (
    FAMILIES,
    NATIVE_SIZE,
    TEXT_ENCODERS,
    UNET,
    VAE,
    empty_components,
    parameter_counts,
    random_pipeline,
)
from reprolib.attention import cross_attention_layers, default_layers, record_attention
from reprolib.conditioning import Embeddings, TextConditioning
from reprolib.delta import Delta
from reprolib.edits import apply_edits
from reprolib.generate import generate
from reprolib.learn_delta import learn_delta
from reprolib.pipelines import load_pipeline
from reprolib.tiny import clip_bpe_tokenizer
from reprolib.tokens import token_span

ORIGINAL = Path("/work/shared/reference/attribute-control/pretrained_deltas")

# parameters of the published checkpoints, as diffusers / transformers count them when they load
PUBLISHED = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}
# what each family's guidance layers are at its native size: (blocks, map side, transformer layers per attention)
GUIDED = {
    "sd15": ({"mid_block": 8, "up_blocks.1": 16}, 1),
    "sd21": ({"mid_block": 12, "up_blocks.1": 24}, 1),
    "sdxl": ({"mid_block": 32, "up_blocks.0": 32}, 10),
}


@pytest.fixture(scope="module")
def bpe_vocab():
    try:
        clip_bpe_tokenizer()
    except RuntimeError as e:
        pytest.skip(f"real CLIP BPE vocabulary unavailable: {e}")


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts_are_the_published_models(family):
    assert parameter_counts(family) == PUBLISHED[family]


def test_the_configs_carry_what_differs_between_families():
    assert UNET["sd21"]["upcast_attention"] and UNET["sd21"]["use_linear_projection"]
    assert "upcast_attention" not in UNET["sd15"] and "use_linear_projection" not in UNET["sd15"]
    xl = UNET["sdxl"]
    assert xl["addition_embed_type"] == "text_time" and xl["transformer_layers_per_block"] == (1, 2, 10)
    assert xl["projection_class_embeddings_input_dim"] == 6 * xl["addition_time_embed_dim"] + 1280 == 2816
    assert xl["cross_attention_dim"] == sum(cfg["hidden_size"] for _, _, cfg, _ in TEXT_ENCODERS["sdxl"]) == 2048
    assert [VAE[f]["scaling_factor"] for f in FAMILIES] == [0.18215, 0.18215, 0.13025]
    assert VAE["sdxl"]["force_upcast"] and not VAE["sd15"].get("force_upcast")
    assert [pad for f in FAMILIES for *_, pad in TEXT_ENCODERS[f]] == ["<|endoftext|>", "!", "<|endoftext|>", "!"]
    for f in FAMILIES:
        assert UNET[f]["sample_size"] * 8 == VAE[f]["sample_size"] == NATIVE_SIZE[f]


@pytest.mark.parametrize("family", FAMILIES)
def test_guided_layers_and_their_maps_at_native_resolution(family):
    """default_layers on the true UNet, and the maps a forward pass at native size records (on the meta device)."""
    unet = empty_components(family)["unet"]
    blocks, depth = GUIDED[family]
    layers = default_layers(unet)
    assert {".".join(n.split(".")[:2]).replace(".attentions", "") for n in layers} == set(blocks)
    sides = dict(cross_attention_layers(unet))
    attentions = {n.rsplit(".transformer_blocks", 1)[0] for n in layers}
    assert all(sum(n.startswith(a + ".") for n in layers) == depth for a in attentions)
    assert len(layers) == (1 + 3) * depth  # the mid block's attention and the up block's three
    side = NATIVE_SIZE[family] // 8
    with torch.device("meta"):
        x, ctx = torch.empty(1, 4, side, side), torch.empty(1, 77, UNET[family]["cross_attention_dim"])
        added = {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)} if family == "sdxl" else None
    with record_attention(unet, "default") as store:
        out = unet(x, torch.tensor(999, device="meta"), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    assert out.shape == x.shape
    assert set(store.maps) == set(layers)
    for name in layers:
        block = ".".join(name.split(".")[:2]).replace(".attentions", "")
        _, heads, h, w, tokens = store.grid(name).shape
        assert h == w == sides[name] == blocks[block] and tokens == 77, name
        assert heads == unet.get_submodule(name).heads


def test_a_true_size_unet_pass_is_finite(bpe_vocab):
    """SD 2.1 (v-prediction, upcast attention, linear projections; '!' padding) at 128²: depth is the point."""
    pipe = random_pipeline("sd21", on_meta=["vae"])
    assert pipe.scheduler.config.prediction_type == "v_prediction" and pipe.tokenizer.pad_token == "!"
    cond = TextConditioning(pipe)
    emb = cond.encode("a photo of an old man")
    assert cond.dims == {"openclip_h": 1024} and torch.isfinite(emb.context()).all()
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = cond.unet(x, torch.tensor(999), emb)
    assert out.shape == x.shape and torch.isfinite(out).all() and 0.01 < float(out.std()) < 100
    del pipe, cond, emb
    gc.collect()


@pytest.fixture(scope="module")
def sdxl_encoders(bpe_vocab):
    """The true-size SDXL text encoders (CLIP-L 768 + OpenCLIP-G 1280, fp32, ~3.3 GB); UNet and VAE on meta."""
    pipe = load_pipeline("sdxl", random_weights=True, device="cpu", on_meta=["unet", "vae"])
    yield pipe
    del pipe
    gc.collect()


def test_random_weights_loading_names_what_it_is(bpe_vocab):
    pipe = load_pipeline("sd15", random_weights=True, device="cpu", on_meta=["unet", "vae", "text_encoder"])
    assert pipe.reprolib_model == "random-sd15" and type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.unet.device.type == "meta" and pipe.tokenizer.pad_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="sd15"):
        load_pipeline("shapes", random_weights=True)
    with pytest.raises(ValueError, match="text_encoder_2"):
        random_pipeline("sd15", on_meta=["text_encoder_2"])


def test_sdxl_pooled_embedding_and_time_ids_fit_the_true_unet(sdxl_encoders):
    assert sdxl_encoders.reprolib_model == "random-sdxl"
    assert type(sdxl_encoders.scheduler).__name__ == "EulerDiscreteScheduler"
    cond = TextConditioning(sdxl_encoders)
    assert cond.dims == {"clip_l": 768, "openclip_g": 1280}
    assert sdxl_encoders.tokenizer.pad_token == "<|endoftext|>" and sdxl_encoders.tokenizer_2.pad_token == "!"
    emb = cond.encode(["a photo of an old man", "a red car"])
    assert emb.context().shape == (2, 77, 2048) and emb.pooled.shape == (2, 1280)
    assert all(torch.isfinite(s).all() for s in emb.states.values()) and torch.isfinite(emb.pooled).all()
    assert cond.default_size() == (1024, 1024)
    added = cond.added_cond(emb, 1024, 1024)
    assert added["time_ids"].tolist() == [[1024, 1024, 0, 0, 1024, 1024]] * 2
    neg = cond.encode_negative(None, 2)  # SDXL: zeros for an absent negative prompt
    assert neg.pooled.abs().max() == 0 and all(s.abs().max() == 0 for s in neg.states.values())
    unet = sdxl_encoders.unet
    assert unet.device.type == "meta"
    with torch.device("meta"):
        x = torch.empty(2, 4, 128, 128)
    on_meta = Embeddings({k: v.to("meta") for k, v in emb.states.items()}, emb.pooled.to("meta"))
    out = cond.unet(x, torch.tensor(999, device="meta"), on_meta)
    assert out.shape == x.shape  # 2048-wide context and 6·256 + 1280 = 2816 added embedding: the shapes fit


@pytest.mark.skipif(not ORIGINAL.is_dir(), reason="original attribute-control deltas not present")
def test_the_34_original_deltas_on_the_true_sdxl_encoders(sdxl_encoders):
    """Each half to its encoder (768 → CLIP-L, 1280 → OpenCLIP-G), only the subject's tokens move."""
    files = sorted(ORIGINAL.glob("*.pt"))
    assert len(files) == 34
    cond = TextConditioning(sdxl_encoders)
    prompt = "a person on a chair at a table beside a bed, a bike, a car and a truck"
    emb = cond.encode(prompt)
    for f in files:
        d = Delta.load(f)
        subject = f.stem.split("_")[0]
        out = apply_edits(cond, emb, [(d, subject, 1.5)])
        assert torch.equal(out.pooled, emb.pooled)
        for name, dim in cond.dims.items():
            tokens = emb.tokens[0] if name == "clip_l" else cond.tokenize(prompt, sdxl_encoders.tokenizer_2)
            pos = token_span(tokens, subject)
            diff = (out.states[name] - emb.states[name])[0]
            assert diff.shape[-1] == dim == d.vectors[name].numel()
            assert torch.allclose(diff[pos], 1.5 * d.vectors[name].expand(len(pos), -1), atol=1e-5), (f.stem, name)
            rest = [i for i in range(diff.shape[0]) if i not in pos]
            assert diff[rest].abs().max() == 0, (f.stem, name)


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_half_precision_generate_edit_and_layout_on_cpu(half):
    """torch 2.13 runs every op of these paths in bf16 and fp16 on CPU (slowly, without native support)."""
    pipe = load_pipeline("tiny-sdxl", dtype=half, device="cpu")
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[half]
    assert pipe.unet.dtype == pipe.text_encoder_2.dtype == dt
    cond = TextConditioning(pipe)
    d = Delta({k: torch.full((v,), 0.1) for k, v in cond.dims.items()})
    edited = generate(
        pipe, "a red circle", steps=2, height=32, width=32, edits=[(d, "circle", 1.0)], delay=0.0, output_type="np"
    )
    guided = generate(
        pipe, "a red circle", steps=2, height=32, width=32, boxes={"circle": (0, 0, 0.5, 0.5)}, output_type="latent"
    )
    assert np.isfinite(edited).all() and guided.dtype == dt and torch.isfinite(guided).all()


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_half_precision_learn_delta_on_cpu(half):
    pipe = load_pipeline("tiny-sd21", dtype=half, device="cpu")
    config = {
        "tag": "t",
        "prefixes": ["a"],
        "prompts": [
            {
                "prompt_target": "circle",
                "prompt_positive": "big circle",
                "prompt_negative": "small circle",
                "pattern_target": "circle",
            }
        ],
    }
    delta = learn_delta(
        pipe,
        config,
        max_steps=1,
        grad_accum_steps=1,
        scale_batch_size=1,
        num_steps=2,
        cache_size=1,
        height=32,
        width=32,
        progress=False,
        gradient_checkpointing=True,
    )
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() and v.norm() > 0 for v in delta.vectors.values())
