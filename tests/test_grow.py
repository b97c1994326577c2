"""Growing the shapes world's text encoder wider or deeper, or its UNet's attention deeper, keeps what the
model computes."""

import json

import pytest
import torch

from reprolib.checks import InputError
from reprolib.shapes import grow
from reprolib.shapes.model import build_text_encoder, build_unet
from reprolib.shapes.tokenizer import load_tokenizer, save_tokenizer
from reprolib.shapes.train.__main__ import main as train_cli

CAPTIONS = ["a red circle and a big green square", "a small blue triangle"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok")))


def _trained_like(module):
    """Random weights of a trained model's scale (an initialised CLIP's layer norms are exactly 1 and 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def test_a_grown_encoder_and_unet_predict_the_same_noise(tokenizer):
    small, unet = _trained_like(build_text_encoder(tokenizer)), _trained_like(build_unet())
    big, wide_unet = build_text_encoder(tokenizer, width=128, layers=5), build_unet(text_width=128)
    big.load_state_dict(grow.grow_text_encoder(small.state_dict(), big))
    wide_unet.load_state_dict(grow.grow_unet(unet.state_dict(), wide_unet))
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([900, 300])
    with torch.no_grad():
        states, grown = small(ids.input_ids)[0], big.eval()(ids.input_ids)[0]
        torch.testing.assert_close(grown, torch.cat([states, states], -1), atol=1e-5, rtol=1e-5)
        noise = wide_unet.eval()(x, t, grown).sample
        torch.testing.assert_close(noise, unet(x, t, states).sample, atol=1e-5, rtol=1e-5)
    assert grow.layer_count(big.state_dict()) == 5


def test_a_deeper_unet_attention_predicts_the_same_noise_and_then_learns(tokenizer):
    """New transformer blocks start as the identity, yet every part of them gets a gradient after a step."""
    text, unet = _trained_like(build_text_encoder(tokenizer)), _trained_like(build_unet())
    deep = build_unet(transformer_layers=(2, 1, 3))
    deep.load_state_dict(grow.grow_unet(unet.state_dict(), deep))
    assert grow.transformer_depths(deep.state_dict()) == (2, 1, 3)
    assert grow.transformer_depths(unet.state_dict()) == (1, 1, 1)
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([900, 300])
    with torch.no_grad():
        states = text(ids.input_ids)[0]
        torch.testing.assert_close(deep.eval()(x, t, states).sample, unet(x, t, states).sample)
    new = deep.up_blocks[2].attentions[1].transformer_blocks[1]
    assert new.attn2.to_out[0].weight.abs().sum() == 0 and new.attn2.to_q.weight.abs().sum() > 0
    opt = torch.optim.SGD(deep.parameters(), lr=0.1)
    for _ in range(2):  # step 1 moves the silent outputs; step 2 reaches the projections behind them
        opt.zero_grad()
        deep.train()(x, t, states).sample.pow(2).mean().backward()
        opt.step()
    assert new.attn2.to_out[0].weight.abs().sum() > 0 and new.attn2.to_q.weight.grad.abs().sum() > 0
    assert new.ff.net[0].proj.weight.grad.abs().sum() > 0


def test_the_copies_of_a_grown_state_can_drift_apart(tokenizer):
    """The split weights sum to the old one but differ, so the two copies of a state get different gradients."""
    small = _trained_like(build_text_encoder(tokenizer))
    big = build_text_encoder(tokenizer, width=128)
    big.load_state_dict(grow.grow_text_encoder(small.state_dict(), big))
    w, old = big.state_dict()["encoder.layers.0.mlp.fc2.weight"], small.state_dict()["encoder.layers.0.mlp.fc2.weight"]
    parts = w[:64].split(256, dim=1)
    torch.testing.assert_close(parts[0] + parts[1], old)
    assert not torch.allclose(parts[0], parts[1])
    ids = tokenizer(CAPTIONS, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    big.train()(ids.input_ids)[0].pow(2).sum().backward()
    g = big.embeddings.token_embedding.weight.grad
    assert not torch.allclose(g[:, :64], g[:, 64:])


BASE = ["--scenes", "64", "--batch", "4"]


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    out = tmp_path_factory.mktemp("v1")
    train_cli(["--out", str(out), "--vae-steps", "1", "--unet-steps", "1"] + BASE)
    return str(out)


def test_training_grows_a_run_and_exports_the_grown_model(tmp_path, v1):
    grown = BASE + ["--init-from", v1, "--text-width", "128", "--text-layers", "4"]
    train_cli(["--out", str(tmp_path / "w")] + grown + ["--unet-steps", "1"])
    run = json.loads((tmp_path / "w" / "run.json").read_text())
    assert (run["text_width"], run["text_layers"]) == (128, 4)
    with pytest.raises(InputError, match="--text-width 64 / --text-layers 3: .* was trained with 128 / 4"):
        train_cli(["--out", str(tmp_path / "w")] + BASE + ["--init-from", v1, "--unet-steps", "2"])
    train_cli(["--out", str(tmp_path / "w"), "--export", str(tmp_path / "pipe")])
    cfg = json.loads((tmp_path / "pipe" / "text_encoder" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (128, 4, 4)
    unet = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert unet["cross_attention_dim"] == 128


def test_training_deepens_a_runs_unet_and_exports_it(tmp_path, v1):
    deep = BASE + ["--init-from", v1, "--transformer-layers", "2", "1", "1"]
    train_cli(["--out", str(tmp_path / "d")] + deep + ["--unet-steps", "1"])
    assert json.loads((tmp_path / "d" / "run.json").read_text())["transformer_layers"] == [2, 1, 1]
    with pytest.raises(InputError, match="--transformer-layers 1 1 1: .* was trained with 2 1 1"):
        train_cli(["--out", str(tmp_path / "d")] + BASE + ["--init-from", v1, "--unet-steps", "2"])
    with pytest.raises(InputError, match="--transformer-layers 1 1 2: --init-from .* has 2 1 1; pass at least"):
        train_cli(
            ["--out", str(tmp_path / "e"), "--init-from", str(tmp_path / "d")]
            + BASE
            + ["--transformer-layers", "1", "1", "2"]
        )
    train_cli(["--out", str(tmp_path / "d"), "--export", str(tmp_path / "pipe")])
    unet = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert unet["transformer_layers_per_block"] == [2, 1, 1]


def test_a_wider_unet_trains_from_scratch_and_exports(tmp_path, v1):
    train_cli(
        ["--out", str(tmp_path / "w"), "--vae-steps", "1", "--unet-steps", "1", "--unet-channels", "64", "64", "96"]
        + BASE
    )
    assert json.loads((tmp_path / "w" / "run.json").read_text())["unet_channels"] == [64, 64, 96]
    with pytest.raises(InputError, match="--unet-channels 32 64 64: .* was trained with 64 64 96"):
        train_cli(["--out", str(tmp_path / "w"), "--vae-steps", "1", "--unet-steps", "2"] + BASE)
    train_cli(["--out", str(tmp_path / "w"), "--export", str(tmp_path / "pipe")])
    unet = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert (unet["block_out_channels"], unet["attention_head_dim"]) == ([64, 64, 96], [2, 2, 3])


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--text-width", "96"], "--text-width 96 / --text-layers 3: --init-from .* 64 wide"),
        (["--transformer-layers", "0", "1", "1"], "--transformer-layers must be"),
        (
            ["--unet-channels", "64", "64", "64"],
            "--unet-channels 64 64 64: --init-from .* has 32 64 64; pass those",
        ),
        (["--unet-channels", "48", "64", "64"], "--unet-channels must be multiples of 32"),
        (["--text-layers", "2"], "--text-width 64 / --text-layers 2: --init-from .* 3 layers"),
        (["--text-width", "100"], "--text-width must be a multiple of 32"),
    ],
)
def test_a_text_encoder_that_cannot_grow_from_the_init_is_named(tmp_path, v1, flags, named):
    with pytest.raises(InputError, match=named):
        train_cli(["--out", str(tmp_path / "bad"), "--init-from", v1] + BASE + flags)
