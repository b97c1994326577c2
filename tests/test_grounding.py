"""Training levers of the shapes world v3 candidate (#13): the grounding loss and attribute dropout."""

import json

import pytest
import torch

from reprolib.attention import cross_attention_layers, record_attention
from reprolib.checks import InputError
from reprolib.conditioning import padding_mask
from reprolib.shapes import grounding, train, world
from reprolib.shapes.model import build_unet
from reprolib.shapes.tokenizer import MAX_LENGTH, load_tokenizer, save_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok")))


def _ids(tokenizer, captions):
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids


def test_noun_targets_point_at_each_objects_noun_and_cover_it(tokenizer):
    scenes = world.scenes(60, seed=3, p_empty=0.1, **world.MIXES["v2"])
    ids = _ids(tokenizer, [s.caption for s in scenes])
    pos, masks = grounding.noun_targets(scenes, ids, tokenizer)
    words = [[t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(r.tolist())] for r in ids]
    for i, s in enumerate(scenes):
        n = len(s.objects) if s.caption else 0
        assert (pos[i, n:] == -1).all() and (masks[i, n:] == 0).all()
        for k in range(n):
            obj = s.objects[k]
            assert words[i][pos[i, k]] == obj.shape and words[i][pos[i, k] - 1] == obj.colour
            # pooled 4×4: each cell holds the covered share, so the sum is the area ÷ 16
            area = world.coverage(obj).sum()
            assert float(masks[i, k].float().sum()) == pytest.approx(area / 16, rel=0.01)
    assert (pos >= 0).sum() > 60  # the v2 mix: mostly several objects


def test_hooked_probabilities_equal_the_recorded_maps_and_keep_their_graph():
    torch.manual_seed(0)
    unet = build_unet()
    ids = torch.tensor([[0, 5, 6, 9, 9, 9], [0, 5, 6, 7, 8, 9]])
    cond = torch.randn(2, 6, 64, requires_grad=True)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([300, 700])
    mask = padding_mask(ids, 9)
    layers = [n for n, _ in cross_attention_layers(unet)]
    with grounding.cross_attention_probs(unet) as maps, record_attention(unet, layers) as store:
        unet(x, t, encoder_hidden_states=cond, encoder_attention_mask=mask)
    assert sorted(maps) == sorted(layers)
    for name in layers:
        torch.testing.assert_close(maps[name].detach(), store.get(name))
        assert maps[name][0, :, :, 4:].abs().max() < 1e-6  # padding masked
    sum(m.sum() for m in maps.values()).backward()
    assert cond.grad is not None
    assert not any(m._forward_hooks for m in unet.modules())  # hooks removed


def _maps(side, inside: bool):
    """One layer: all of token 1's attention on the top-left quarter (inside) or the bottom-right one."""
    a = torch.zeros(1, 1, side, side, 3)
    a[..., 2] = 1.0
    q = side // 2
    if inside:
        a[0, 0, :q, :q, 1] = 1.0
    else:
        a[0, 0, q:, q:, 1] = 1.0
    return {"layer": (a / a.sum(-1, keepdim=True)).flatten(2, 3)}


def test_grounding_loss_is_zero_inside_one_outside_and_ignores_missing_objects():
    masks = torch.zeros(1, 3, 16, 16)
    masks[0, 0, :8, :8] = 1
    pos = torch.tensor([[1, -1, -1]])
    assert float(grounding.grounding_loss(_maps(8, True), pos, masks)) == pytest.approx(0.0, abs=1e-6)
    assert float(grounding.grounding_loss(_maps(8, False), pos, masks)) == pytest.approx(1.0)
    assert float(grounding.grounding_loss(_maps(4, True), pos, masks)) == pytest.approx(0.0, abs=1e-6)
    assert float(grounding.grounding_loss(_maps(8, True), torch.tensor([[-1, -1, -1]]), masks)) == 0.0


def test_attribute_dropout_hides_only_colour_and_size_words(tokenizer):
    ids = _ids(tokenizer, ["a big red circle and a blue square", "a green triangle"])
    attrs = grounding.attribute_positions(ids, tokenizer)
    words = [[t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(r.tolist())] for r in ids]
    assert [w for w, a in zip(words[0], attrs[0]) if a] == ["big", "red", "blue"]
    mask = padding_mask(ids, tokenizer.eos_token_id)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(grounding.drop_attributes(mask, attrs, 0.0, g), mask)
    dropped = grounding.drop_attributes(mask, attrs, 1.0, g)
    assert torch.equal(dropped, mask * ~attrs)
    assert dropped[0, words[0].index("circle")] == 1


def test_training_with_the_levers_records_them_and_changes_the_update(tmp_path):
    base = ["--scenes", "64", "--batch", "4", "--vae-steps", "2", "--mix", "v2", "--mask-padding"]
    train.main(["--out", str(tmp_path / "plain"), "--unet-steps", "2"] + base)
    levers = ["--grounding", "0.5", "--attribute-dropout", "0.5"]
    for d in ("data.pt", "vae.pt", "latents.pt"):  # the same data and VAE: only the levers differ
        (tmp_path / "lev").mkdir(exist_ok=True)
        (tmp_path / "lev" / d).write_bytes((tmp_path / "plain" / d).read_bytes())
    train.main(["--out", str(tmp_path / "lev"), "--unet-steps", "2"] + base + levers)
    run = json.loads((tmp_path / "lev" / "run.json").read_text())
    assert run["grounding"] == 0.5 and run["attribute_dropout"] == 0.5
    a, b = torch.load(tmp_path / "plain" / "unet.pt"), torch.load(tmp_path / "lev" / "unet.pt")
    assert any(not torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    with pytest.raises(InputError, match="--attribute-dropout"):
        train.main(["--out", str(tmp_path / "bad"), "--attribute-dropout", "1.5"] + base)
    with pytest.raises(InputError, match="--grounding"):
        train.main(["--out", str(tmp_path / "bad"), "--grounding", "-1"] + base)
