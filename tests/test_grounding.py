"""Training levers of the shapes world (#13): the grounding loss, attribute dropout and token swap."""

import json

import numpy as np
import pytest
import torch

from reprolib.attention import cross_attention_layers, record_attention
from reprolib.checks import InputError
from reprolib.conditioning import padding_mask
from reprolib.generate import defaults
from reprolib.pipelines import load_pipeline
from reprolib.shapes import grounding, world
from reprolib.shapes.model import KeyCap, build_unet, cap_keys, key_caps, normalise_keys, training_scheduler
from reprolib.shapes.tokenizer import MAX_LENGTH, load_tokenizer, save_tokenizer
from reprolib.shapes.train.__main__ import main as train_cli
from reprolib.shapes.train.unet import swap_batch


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return load_tokenizer(save_tokenizer(tmp_path_factory.mktemp("tok")))


def _ids(tokenizer, captions):
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids


@pytest.mark.parametrize("mix", ["v2", "v4"])  # v4: a colour may repeat, so the k-th noun is the k-th object's
def test_noun_targets_point_at_each_objects_noun_and_cover_it(tokenizer, mix):
    scenes = world.scenes(60, seed=3, p_empty=0.1, **world.MIXES[mix])
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
    if mix == "v4":
        assert any(len({o.colour for o in s.objects}) < len(s.objects) for s in scenes if s.caption)


def test_phrase_targets_add_each_objects_colour_and_size_words(tokenizer):
    scenes = world.scenes(60, seed=4, p_empty=0.1, **world.MIXES["v2"])
    ids = _ids(tokenizer, [s.caption for s in scenes])
    pos, _ = grounding.noun_targets(scenes, ids, tokenizer)
    targets = grounding.phrase_targets(pos, ids, tokenizer)
    assert targets.shape == (len(scenes), 3 * grounding.MAX_OBJECTS)
    sized = 0
    for i, s in enumerate(scenes):
        words = _words_of(tokenizer, ids[i])
        for k, obj in enumerate(s.objects if s.caption else ()):
            noun, colour, size = (int(targets[i, k + j * grounding.MAX_OBJECTS]) for j in range(3))
            assert noun == pos[i, k] and words[colour] == obj.colour
            said = s.caption.split(obj.colour)[0].split()[-1:] in (["small"], ["big"])  # a size word before it
            assert (size >= 0) == said and (not said or words[size] == obj.size_word)
            sized += said
        assert (
            targets[i, [k + j * 3 for j in range(3) for k in range(len(s.objects) if s.caption else 0, 3)]] == -1
        ).all()
    assert sized > 10


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


def test_grounded_layers_leave_the_skipped_blocks_free():
    unet = build_unet()
    with grounding.cross_attention_probs(unet, grounding.GROUNDED_LAYERS["outer"]) as maps:
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 6, 64))
    sides = sorted({int(m.shape[2] ** 0.5) for m in maps.values()})
    assert sides == [8, 16] and len(maps) == len(cross_attention_layers(unet)) - 1  # all but the 4×4 mid block
    with grounding.cross_attention_probs(unet, grounding.GROUNDED_LAYERS["16x16"]) as maps:
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 6, 64))
    assert {int(m.shape[2] ** 0.5) for m in maps.values()} == {16} and len(maps) == 3  # down 0, up 2 (two)
    with grounding.cross_attention_probs(unet, grounding.GROUNDED_LAYERS["16x16+last-8x8"]) as maps:
        unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 6, 64))
    eight = [n for n, m in maps.items() if m.shape[2] == 64]
    assert len(maps) == 4 and [n.split(".transformer")[0] for n in eight] == ["up_blocks.1.attentions.1"]


def test_grounding_through_moves_only_the_named_side():
    torch.manual_seed(0)
    unet = build_unet()
    attn = unet.get_submodule(cross_attention_layers(unet)[-1][0])  # the last: no map reads its output
    grads = {}
    for through in grounding.GROUNDING_THROUGH:
        unet.zero_grad(set_to_none=True)
        cond = torch.randn(1, 6, 64, requires_grad=True)
        with grounding.cross_attention_probs(unet, through=through) as maps:
            unet(torch.randn(1, 4, 16, 16), torch.tensor([500]), encoder_hidden_states=cond)
        sum(m[..., 1].square().sum() for m in maps.values()).backward()  # the maps alone, not the UNet's output
        grads[through] = (attn.to_q.weight.grad, attn.to_k.weight.grad, cond.grad)
    q, k, text = grads["both"]
    assert q.abs().sum() > 0 and k.abs().sum() > 0 and text.abs().sum() > 0
    q, k, text = grads["keys"]
    assert q is None and k.abs().sum() > 0 and text.abs().sum() > 0  # to_k and the text states move
    q, k, _ = grads["queries"]  # the text still moves, through the features of the layers below
    assert q.abs().sum() > 0 and k is None  # to_q and the UNet's features move, this layer's keys do not
    q, k, text = grads["unet"]
    assert q.abs().sum() > 0 and k.abs().sum() > 0  # the text states move only through the layers below
    assert text.abs().sum() < grads["both"][2].abs().sum()
    with pytest.raises(ValueError, match="through='values'"):
        with grounding.cross_attention_probs(unet, through="values"):
            pass


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
    # two words per object (phrase_targets' layout): token 2 holds half of each of the 16 cells inside and all
    # of the 48 outside, so 8 of its 56 inside; the loss is the mean over both words
    two = torch.tensor([[1, -1, -1, 2, -1, -1]])
    assert float(grounding.grounding_loss(_maps(8, True), two, masks)) == pytest.approx((0 + (1 - 8 / 56) ** 2) / 2)
    # rows left out (--grounding-max-t: the noisiest timesteps) do not count
    outside = _maps(8, False)
    both = {"layer": torch.cat([_maps(8, True)["layer"], outside["layer"]])}
    pos2, masks2 = pos.repeat(2, 1), masks.repeat(2, 1, 1, 1)
    assert float(grounding.grounding_loss(both, pos2, masks2)) == pytest.approx(0.5)
    held = torch.tensor([True, False])
    assert float(grounding.grounding_loss(both, pos2, masks2, held)) == pytest.approx(0.0, abs=1e-6)
    assert float(grounding.grounding_loss(both, pos2, masks2, ~held)) == pytest.approx(1.0)
    assert float(grounding.grounding_loss(both, pos2, masks2, torch.tensor([False, False]))) == 0.0


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
    train_cli(["--out", str(tmp_path / "plain"), "--unet-steps", "2"] + base)
    levers = ["--grounding", "0.5", "--attribute-dropout", "0.5", "--token-swap", "0.5", "--swap-reach", "2"]
    levers += ["--ground-adjectives", "--swap-late", "0.5", "--swap-name-size", "0.5", "--short-deltas", "0.3"]
    levers += ["--grounding-layers", "outer", "--grounding-max-t", "500", "--grounding-through", "keys"]
    levers += ["--grounding-min-t", "100"]
    levers += ["--stretch-nouns", "0.5", "--stretch-max", "2", "--exclusive", "0.05", "--exclusive-layers", "16x16"]
    for d in ("data.pt", "vae.pt", "latents.pt"):  # the same data and VAE: only the levers differ
        (tmp_path / "lev").mkdir(exist_ok=True)
        (tmp_path / "lev" / d).write_bytes((tmp_path / "plain" / d).read_bytes())
    train_cli(["--out", str(tmp_path / "lev"), "--unet-steps", "2"] + base + levers)
    run = json.loads((tmp_path / "lev" / "run.json").read_text())
    assert run["grounding"] == 0.5 and run["attribute_dropout"] == 0.5 and run["token_swap"] == 0.5
    assert run["swap_reach"] == 2 and run["ground_adjectives"] is True and run["swap_late"] == 0.5
    assert run["swap_name_size"] == 0.5 and run["short_deltas"] == 0.3 and run["grounding_layers"] == "outer"
    assert run["grounding_max_t"] == 500 and run["grounding_through"] == "keys" and run["grounding_min_t"] == 100
    assert run["stretch_nouns"] == 0.5 and run["stretch_max"] == 2 and run["exclusive"] == 0.05
    assert run["exclusive_layers"] == "16x16"
    # the swaps' noun change is logged (a swap moves this untrained encoder's noun token by a share of its length)
    assert 0 < torch.load(tmp_path / "lev" / "unet.pt")["history"][-1]["noun_change"] < 10
    a, b = torch.load(tmp_path / "plain" / "unet.pt"), torch.load(tmp_path / "lev" / "unet.pt")
    assert any(not torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
    # resumed, a run takes more steps but not another lever: each change is refused by its flag, both values named
    changed = [("--exclusive-layers", "16x16", "outer"), ("--grounding-min-t", "100", "200"), ("--mix", "v2", "v10")]
    for flag, was, now in changed:
        given = base + levers
        argv = [now if x == was and before == flag else x for before, x in zip([""] + given, given)]
        with pytest.raises(InputError, match=f"{flag} {now}: .* was trained with {flag} {was}; pass the same"):
            train_cli(["--out", str(tmp_path / "lev"), "--unet-steps", "3"] + argv)
    with pytest.raises(InputError, match="--exclusive not given: .* was trained with --exclusive 0.05"):
        cut = levers.index("--exclusive")
        train_cli(["--out", str(tmp_path / "lev"), "--unet-steps", "3"] + base + levers[:cut])
    train_cli(["--out", str(tmp_path / "lev"), "--unet-steps", "3"] + base + levers)  # the same levers: resumed
    assert torch.load(tmp_path / "lev" / "unet.pt")["step"] == 3
    with pytest.raises(InputError, match="--attribute-dropout"):
        train_cli(["--out", str(tmp_path / "bad"), "--attribute-dropout", "1.5"] + base)
    with pytest.raises(InputError, match="--token-swap"):
        train_cli(["--out", str(tmp_path / "bad"), "--token-swap", "-0.1"] + base)
    with pytest.raises(InputError, match=r"--stretch-nouns must be in \[0, 1\]"):
        train_cli(["--out", str(tmp_path / "bad"), "--stretch-nouns", "1.5"] + base)
    with pytest.raises(InputError, match="--stretch-max must be > 1"):
        train_cli(["--out", str(tmp_path / "bad"), "--stretch-nouns", "0.5", "--stretch-max", "1"] + base)
    with pytest.raises(InputError, match="--swap-reach must be >= 1"):
        train_cli(["--out", str(tmp_path / "bad"), "--token-swap", "0.5", "--swap-reach", "0.5"] + base)
    with pytest.raises(InputError, match="--swap-reach 2.0 needs --token-swap"):
        train_cli(["--out", str(tmp_path / "bad"), "--swap-reach", "2"] + base)
    with pytest.raises(InputError, match="--swap-late 0.5 needs --token-swap"):
        train_cli(["--out", str(tmp_path / "bad"), "--swap-late", "0.5"] + base)
    with pytest.raises(InputError, match=r"--swap-late must be in \[0, 1\]"):
        train_cli(["--out", str(tmp_path / "bad"), "--token-swap", "0.5", "--swap-late", "2"] + base)
    with pytest.raises(InputError, match="--swap-name-size 1.0 needs --token-swap"):
        train_cli(["--out", str(tmp_path / "bad"), "--swap-name-size", "1"] + base)
    with pytest.raises(InputError, match=r"--swap-name-size must be in \[0, 1\]"):
        train_cli(["--out", str(tmp_path / "bad"), "--token-swap", "0.5", "--swap-name-size", "-0.5"] + base)
    with pytest.raises(InputError, match="--short-deltas 0.3 needs --token-swap"):
        train_cli(["--out", str(tmp_path / "bad"), "--short-deltas", "0.3"] + base)
    with pytest.raises(InputError, match="--short-deltas is a share"):
        train_cli(["--out", str(tmp_path / "bad"), "--token-swap", "0.5", "--short-deltas", "0"] + base)
    with pytest.raises(InputError, match="--grounding"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding", "-1"] + base)
    with pytest.raises(InputError, match="--ground-adjectives needs --grounding"):
        train_cli(["--out", str(tmp_path / "bad"), "--ground-adjectives"] + base)
    with pytest.raises(InputError, match="--grounding-layers outer needs --grounding > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding-layers", "outer"] + base)
    with pytest.raises(InputError, match="--grounding-max-t 500 needs --grounding > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding-max-t", "500"] + base)
    with pytest.raises(InputError, match="--grounding-through queries needs --grounding > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding-through", "queries"] + base)
    with pytest.raises(InputError, match="--exclusive 0.05 needs --grounding > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--exclusive", "0.05"] + base)
    with pytest.raises(InputError, match="--exclusive-layers 16x16 needs --exclusive > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding", "0.1", "--exclusive-layers", "16x16"] + base)
    wider = ["--grounding-layers", "16x16", "--exclusive", "0.1", "--exclusive-layers", "outer"]
    with pytest.raises(InputError, match="--exclusive-layers outer holds layers --grounding-layers 16x16 does not"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding", "0.1"] + wider + base)
    with pytest.raises(InputError, match="--exclusive must be >= 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding", "0.1", "--exclusive", "-1"] + base)
    with pytest.raises(InputError, match="--grounding-max-t is a training timestep, 1 to 1000; got 1001"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding", "0.1", "--grounding-max-t", "1001"] + base)
    with pytest.raises(InputError, match="--grounding-min-t 700 needs --grounding > 0"):
        train_cli(["--out", str(tmp_path / "bad"), "--grounding-min-t", "700"] + base)
    window = ["--grounding", "0.1", "--grounding-min-t", "700", "--grounding-max-t", "500"]
    with pytest.raises(InputError, match="--grounding-min-t 700 is not below --grounding-max-t 500"):
        train_cli(["--out", str(tmp_path / "bad")] + window + base)


def _words_of(tokenizer, row):
    return [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(row.tolist())]


def test_token_swap_changes_one_object_in_picture_and_caption_alike(tokenizer):
    scenes = world.scenes(80, seed=5, p_empty=0.1, **world.MIXES["v2"])
    ids = _ids(tokenizer, [s.caption for s in scenes])
    pos, masks = grounding.noun_targets(scenes, ids, tokenizer)
    sw = grounding.swap_tokens(scenes, ids, pos, tokenizer, 0.5, np.random.default_rng(0))
    assert 20 < len(sw.rows) < 60 and all(scenes[int(r)].caption for r in sw.rows)
    resized = 0
    for r, row, image, m, noun in zip(sw.rows, sw.ids, sw.images, sw.masks, sw.noun.tolist()):
        scene, before, after = scenes[int(r)], _words_of(tokenizer, ids[r]), _words_of(tokenizer, row)
        changed = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
        assert after[noun] == before[noun] and after[noun] in world.SHAPES  # the noun itself stays
        assert noun - 1 in changed and set(changed) <= {noun - 1, noun - 2}  # its colour, maybe its size word
        k = [int(p) for p in pos[r]].index(int(noun))
        objs = list(scene.objects)
        new_colour = after[noun - 1]
        assert new_colour not in {o.colour for o in objs}  # colours stay distinct within a scene
        old = objs[k]
        objs[k] = world.Obj(old.shape, new_colour, old.size, old.cx, old.cy)
        pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().numpy()
        if noun - 2 in changed:  # the size word flipped, and the object's drawn area moved into the new bin
            resized += 1
            lo, hi = grounding.SIZE_BINS[after[noun - 2]]
            area = (np.abs(pixels - world.PALETTE[new_colour]).sum(-1) < 60).sum()
            assert lo - 0.5 <= (area / world.AREA_FACTOR[old.shape]) ** 0.5 <= hi + 0.5
            # away from it, the picture is the scene's other objects, unchanged
            x0, y0 = max(0, int(old.cx) - 16), max(0, int(old.cy) - 16)
            others = world.render(tuple(o for i, o in enumerate(objs) if i != k)).astype(float)
            away = np.ones((world.RES, world.RES), bool)
            away[y0 : int(old.cy) + 16, x0 : int(old.cx) + 16] = False
            assert np.abs(pixels - others)[away].max() <= 1
            continue
        assert np.abs(pixels - world.render(tuple(objs))).max() <= 1
        for j, o in enumerate(objs):
            assert float(m[j].float().sum()) == pytest.approx(world.coverage(o).sum() / 16, rel=0.02)
    assert resized > 0
    assert grounding.swap_tokens(scenes, ids, pos, tokenizer, 0.0, np.random.default_rng(0)) is None


def test_swap_states_replaces_only_the_swapped_noun_tokens():
    states, other = torch.randn(4, 9, 8), torch.randn(2, 9, 8)
    sw = grounding.Swapped(torch.tensor([1, 3]), None, None, None, torch.tensor([2, 5]))
    out = grounding.swap_states(states, other, sw)
    assert torch.equal(out[1, 2], other[0, 2]) and torch.equal(out[3, 5], other[1, 5])
    out[1, 2], out[3, 5] = states[1, 2], states[3, 5]
    assert torch.equal(out, states)


def test_swap_reach_goes_that_far_along_old_to_new():
    states, other = torch.randn(4, 9, 8), torch.randn(2, 9, 8)
    sw = grounding.Swapped(torch.tensor([1, 3]), None, None, None, torch.tensor([2, 5]))
    out = grounding.swap_states(states, other, sw, torch.tensor([1.0, 2.0]))
    assert torch.allclose(out[1, 2], other[0, 2])  # reach 1: the new token itself
    assert torch.allclose(out[3, 5], 2 * other[1, 5] - states[3, 5])  # reach 2: as far again past it
    out[1, 2], out[3, 5] = states[1, 2], states[3, 5]
    assert torch.equal(out, states)


def test_late_target_denoises_the_old_pictures_latent_towards_the_new_picture():
    sched = training_scheduler()
    old, new, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([300, 600, 999])
    xt = sched.add_noise(old, eps, t)
    # made from the same picture, the target is the noise itself
    torch.testing.assert_close(grounding.late_target(xt, old, t, sched.alphas_cumprod), eps)
    # from another picture: the x0 a sampler reads off (x_t − √(1−ᾱ)·ε) / √ᾱ is the new picture
    target = grounding.late_target(xt, new, t, sched.alphas_cumprod)
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close((xt - (1 - a).sqrt() * target) / a.sqrt(), new, atol=1e-4, rtol=1e-4)


class _VAE:
    """Encodes a picture as its pixels every 8th row and column: the changed picture, readable in the latent."""

    def encode(self, images):
        mean = images[:, :, ::8, ::8]
        return type("Out", (), {"latent_dist": type("Posterior", (), {"mean": mean, "std": 0 * mean})})()


def test_swap_late_keeps_the_old_latent_only_past_late_from(tokenizer):
    scenes = world.scenes(64, seed=5, p_empty=0.0, **world.MIXES["v2"])
    ids = _ids(tokenizer, [s.caption for s in scenes])
    pos, _ = grounding.noun_targets(scenes, ids, tokenizer)
    sched = training_scheduler()
    shape = (64, 3, world.RES // 8, world.RES // 8)
    xt, noise, cond = torch.randn(shape), torch.randn(shape), torch.randn(64, MAX_LENGTH, 8)
    t = torch.arange(64) * 15  # 0 … 945: both sides of LATE_FROM
    text = lambda i: (torch.randn(len(i), MAX_LENGTH, 8),)  # noqa: E731
    kw = dict(p=1.0, reach=1.0, name_size=0.0, tokenizer=tokenizer, text=text, vae=_VAE(), sched=sched, sf=1.0)
    plain, ratio = swap_batch(
        scenes, ids, pos, (xt, noise, cond, None), t, torch.Generator().manual_seed(0), late=0.0, **kw
    )
    late, _ = swap_batch(scenes, ids, pos, (xt, noise, cond, None), t, torch.Generator().manual_seed(0), late=1.0, **kw)
    swapped = ~torch.isclose(plain[0], xt).flatten(1).all(1)
    assert swapped.sum() > 50 and torch.equal(plain[1], noise)  # plain: the new picture, the batch's noise
    old = swapped & (t >= grounding.LATE_FROM)
    # late: past LATE_FROM the latent is the old one, and the target the noise that makes it the new picture
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    new = (plain[0] - (1 - a).sqrt() * noise) / a.sqrt()
    assert torch.equal(late[0][old], xt[old])
    torch.testing.assert_close(late[1][old], grounding.late_target(xt, new, t, sched.alphas_cumprod)[old])
    assert not torch.allclose(late[1][old], noise[old])
    # before it (and where nothing was swapped) the plain swap
    assert torch.equal(late[0][~old], plain[0][~old]) and torch.equal(late[1][~old], noise[~old])
    assert ratio.shape == (int(swapped.sum()),) and (ratio > 0).all()  # one change ratio per swapped row


def test_change_penalty_is_zero_under_the_limit_and_grows_past_it():
    old = torch.tensor([[3.0, 4.0], [3.0, 4.0]])  # length 5
    new = old + torch.tensor([[1.0, 0.0], [0.0, 4.0]])  # moved by 1 and by 4
    ratio = grounding.change_ratio(old, new)
    torch.testing.assert_close(ratio, torch.tensor([0.2, 0.8]))
    assert grounding.change_penalty(ratio, 0.8) == 0
    torch.testing.assert_close(grounding.change_penalty(ratio, 0.3), torch.tensor(0.5**2 / 2))
    # the gradient pulls the changed token towards the old one (the length it is divided by is detached)
    new.requires_grad_(True)
    grounding.change_penalty(grounding.change_ratio(old, new), 0.3).backward()
    assert new.grad[0].abs().sum() == 0 and (new.grad[1] * (new - old)[1]).sum() > 0


def test_name_size_adds_a_size_word_to_unsized_nouns_and_draws_the_object_in_its_bin(tokenizer):
    scenes = world.scenes(120, seed=7, p_empty=0.0, **world.MIXES["v2"])
    ids = _ids(tokenizer, [s.caption for s in scenes])
    pos, _ = grounding.noun_targets(scenes, ids, tokenizer)
    plain = grounding.swap_tokens(scenes, ids, pos, tokenizer, 1.0, np.random.default_rng(0))
    assert torch.equal(plain.new_noun, plain.noun)  # off: no word is ever added
    sw = grounding.swap_tokens(scenes, ids, pos, tokenizer, 1.0, np.random.default_rng(0), name_size=1.0)
    named = 0
    for r, row, image, noun, new in zip(sw.rows, sw.ids, sw.images, sw.noun.tolist(), sw.new_noun.tolist()):
        before, after = _words_of(tokenizer, ids[r]), _words_of(tokenizer, row)
        if before[noun - 2] in grounding.SIZE_BINS or new == noun:
            continue  # named already (the plain swap), or the new size did not fit
        named += 1
        size_word, colour = after[noun - 1], after[noun]
        assert size_word in grounding.SIZE_BINS and after[new] == before[noun]  # "a red circle" → "a big blue circle"
        assert after[: noun - 1] == before[: noun - 1] and after[new + 1 :] == before[noun + 1 : -1]
        pixels = ((image.permute(1, 2, 0) + 1) * 127.5).round().numpy()
        area = (np.abs(pixels - world.PALETTE[colour]).sum(-1) < 60).sum()
        lo, hi = grounding.SIZE_BINS[size_word]
        assert lo - 0.5 <= (area / world.AREA_FACTOR[before[noun]]) ** 0.5 <= hi + 0.5
    assert named > 10
    # swap_states reads the new token where the changed caption has it
    states, other = torch.zeros(len(ids), MAX_LENGTH, 4), torch.randn(len(sw.rows), MAX_LENGTH, 4)
    out = grounding.swap_states(states, other, sw)
    torch.testing.assert_close(out[sw.rows, sw.noun], other[torch.arange(len(sw.rows)), sw.new_noun])


def test_stretched_nouns_lengthen_one_noun_in_the_chosen_rows_and_nothing_else(tokenizer):
    ids = _ids(tokenizer, ["a red circle and a big green square", "a blue triangle", ""] * 20)
    nouns = grounding.noun_positions(ids, tokenizer)
    assert nouns[0].sum() == 2 and nouns[1].sum() == 1 and nouns[2].sum() == 0
    states = torch.randn(len(ids), ids.shape[1], 8)
    out = grounding.stretch_nouns(states, nouns, 0.5, 2.5, torch.Generator().manual_seed(0))
    factor = (out.norm(dim=-1) / states.norm(dim=-1)).numpy()
    changed = ~np.isclose(factor, 1.0)
    assert (changed.sum(1) <= 1).all() and (changed <= nouns.numpy()).all()  # one noun per row, never another word
    assert ((factor[changed] > 1) & (factor[changed] <= 2.5)).all()
    assert 0.25 < changed[:40].any(1).mean() < 0.75  # about half the captioned rows
    same_direction = torch.nn.functional.cosine_similarity(out, states, dim=-1)
    torch.testing.assert_close(same_direction, torch.ones_like(same_direction))
    untouched = grounding.stretch_nouns(states, nouns, 0.0, 2.5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(untouched, states)


def test_key_norm_places_a_word_by_its_direction_alone():
    """--key-norm (#13): a longer token gets the same attention in the first layer (later layers see its longer
    value); the fused processor, reprolib's ProbsProcessor and the grounding hook agree."""
    torch.manual_seed(0)
    unet = normalise_keys(build_unet()).eval()
    x, t, cond = torch.randn(1, 4, 16, 16), torch.tensor([400]), torch.randn(1, 6, 64)
    longer = cond.clone()
    longer[:, 3] *= 2.5
    layers = [n for n, _ in cross_attention_layers(unet)]
    with torch.no_grad():
        fused = unet(x, t, encoder_hidden_states=cond).sample
        with grounding.cross_attention_probs(unet) as maps, record_attention(unet, layers) as store:
            recorded = unet(x, t, encoder_hidden_states=cond).sample
        with record_attention(unet, layers) as store_longer:
            unet(x, t, encoder_hidden_states=longer)
    torch.testing.assert_close(fused, recorded)
    for name in layers:
        torch.testing.assert_close(maps[name], store.get(name))
    first = layers[0]
    torch.testing.assert_close(store.get(first), store_longer.get(first))
    plain = build_unet()  # without the norm the longer token takes more of the first layer's attention
    plain.load_state_dict(unet.state_dict())
    with torch.no_grad():
        with record_attention(plain, [first]) as a:
            plain(x, t, encoder_hidden_states=cond)
        with record_attention(plain, [first]) as b:
            plain(x, t, encoder_hidden_states=longer)
    assert (a.get(first) - b.get(first)).abs().max() > 1e-3


def test_key_norm_scales_the_queries_once_and_travels_with_the_model(tmp_path, capsys):
    """From a model trained without it, --key-norm scales each layer's queries by its keys' mean length (once: a
    run that starts from a key-normed one keeps them); the export declares it and load_pipeline installs it."""
    base = ["--scenes", "64", "--batch", "4", "--vae-steps", "2", "--mix", "v2", "--mask-padding"]
    train_cli(["--out", str(tmp_path / "plain"), "--unet-steps", "2"] + base)
    kn = ["--unet-steps", "0", "--key-norm"] + base
    train_cli(["--out", str(tmp_path / "kn"), "--init-from", str(tmp_path / "plain")] + kn)
    train_cli(["--out", str(tmp_path / "again"), "--init-from", str(tmp_path / "kn")] + kn)
    ema = {n: torch.load(tmp_path / n / "unet.pt")["ema"]["unet"] for n in ("plain", "kn", "again")}
    queries = [k for k in ema["plain"] if k.endswith("attn2.to_q.weight")]
    assert len(queries) == 7
    for k in ema["plain"]:
        scale = ema["kn"][k] / ema["plain"][k]
        if k in queries:
            assert torch.allclose(scale, scale.flatten()[0]) and 0.05 < scale.flatten()[0] < 20
            assert not torch.allclose(scale, torch.ones_like(scale))
        else:
            assert torch.equal(ema["kn"][k], ema["plain"][k])
        assert torch.equal(ema["again"][k], ema["kn"][k])  # not rescaled a second time
    assert json.loads((tmp_path / "kn" / "run.json").read_text())["key_norm"] is True
    with pytest.raises(SystemExit):
        train_cli(["--out", str(tmp_path / "bad"), "--init-from", str(tmp_path / "kn"), "--unet-steps", "0"] + base)
    assert "was trained with --key-norm; pass --key-norm" in capsys.readouterr().err
    with pytest.raises(InputError, match="--key-norm False: .* was trained with True"):
        train_cli(["--out", str(tmp_path / "kn"), "--init-from", str(tmp_path / "plain"), "--unet-steps", "1"] + base)
    with pytest.raises(InputError, match="--key-caps: .* was trained with --key-norm"):
        train_cli(["--out", str(tmp_path / "kn"), "--export", str(tmp_path / "capped"), "--key-caps"])
    assert not (tmp_path / "capped").exists()  # refused before anything is written
    train_cli(["--out", str(tmp_path / "kn"), "--export", str(tmp_path / "export")])
    sampling = json.loads((tmp_path / "export" / "reprolib.json").read_text())
    assert sampling["key_norm"] is True and sampling["guidance_scale"] == 5.0  # v1's, unless asked
    with pytest.raises(InputError, match="--guidance-scale must be at least 0.0, got -1.0"):
        train_cli(["--out", str(tmp_path / "kn"), "--export", str(tmp_path / "g"), "--guidance-scale", "-1"])
    with pytest.raises(InputError, match="--guidance-scale is written into an export: give --export"):
        train_cli(["--out", str(tmp_path / "fresh"), "--guidance-scale", "7.5"])
    train_cli(["--out", str(tmp_path / "kn"), "--export", str(tmp_path / "g"), "--guidance-scale", "7.5"])
    assert json.loads((tmp_path / "g" / "reprolib.json").read_text())["guidance_scale"] == 7.5
    assert defaults(load_pipeline(tmp_path / "g", device="cpu"))[1] == 7.5  # what generate samples it with
    unet = load_pipeline(tmp_path / "export", device="cpu").unet
    attn = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    assert len(attn) == 7 and all(m.norm_k is not None for m in attn)
    plain = load_pipeline(_exported(tmp_path / "plain"), device="cpu").unet
    assert all(m.norm_k is None for m in plain.modules() if getattr(m, "is_cross_attention", False))


def _exported(run):
    train_cli(["--out", str(run), "--export", str(run.parent / (run.name + "_export"))])
    return run.parent / (run.name + "_export")


def test_key_caps_keep_every_captions_keys_and_shorten_only_longer_ones():
    """Key caps (#13): calibrated on some token states, those states attend exactly as before (fused processor,
    ProbsProcessor and the grounding hook alike); a token stretched past every cap is cut to the cap per head."""
    torch.manual_seed(0)
    unet = build_unet().eval()
    x, t, cond = torch.randn(1, 4, 16, 16), torch.tensor([400]), torch.randn(1, 6, 64)
    layers = [n for n, _ in cross_attention_layers(unet)]
    with torch.no_grad(), record_attention(unet, layers) as before:
        out = unet(x, t, encoder_hidden_states=cond).sample
    caps = key_caps(unet, cond)
    cap_keys(unet, caps)
    longer = cond.clone()
    longer[:, 3] *= 3.0
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, encoder_hidden_states=cond).sample, out)
        with grounding.cross_attention_probs(unet) as maps, record_attention(unet, layers) as after:
            unet(x, t, encoder_hidden_states=cond)
        with record_attention(unet, layers) as stretched:
            unet(x, t, encoder_hidden_states=longer)
    for name in layers:
        torch.testing.assert_close(after.get(name), before.get(name))
        torch.testing.assert_close(maps[name], before.get(name))
    first = dict(unet.named_modules())[layers[0]]
    with torch.no_grad():
        k = first.to_k(longer).view(1, 6, first.heads, -1).transpose(1, 2)
        rms = first.norm_k(k).pow(2).mean(-1).sqrt()  # (1, heads, tokens)
        cap = torch.tensor(caps[layers[0]])
        torch.testing.assert_close(rms[0, :, 3], cap)  # the stretched token: at the cap
        assert (rms <= cap[None, :, None] + 1e-5).all()
    # the stretched token still takes more attention than before, but no more than at the cap's length
    assert (stretched.get(layers[0]) - before.get(layers[0])).abs().max() > 1e-3
    with pytest.raises(ValueError, match="already has a key norm"):
        cap_keys(unet, caps)
    with pytest.raises(ValueError, match="this UNet does not have or lacks"):
        cap_keys(build_unet(), {layers[0]: caps[layers[0]]})


def test_key_caps_travel_in_reprolib_json(tmp_path):
    """--export --key-caps writes each layer's longest caption key into reprolib.json and load_pipeline installs
    the caps; an export without it loads plain; --key-caps alone is refused."""
    base = ["--scenes", "64", "--batch", "4", "--vae-steps", "2", "--mix", "v2", "--mask-padding"]
    run = tmp_path / "run"
    train_cli(["--out", str(run), "--unet-steps", "1"] + base)
    plain = load_pipeline(_exported(run), device="cpu").unet
    assert all(m.norm_k is None for m in plain.modules() if getattr(m, "is_cross_attention", False))
    with pytest.raises(InputError, match="--key-caps is written into an export"):
        train_cli(["--out", str(tmp_path / "other"), "--key-caps"])
    train_cli(["--out", str(run), "--export", str(tmp_path / "capped"), "--key-caps"])
    caps = json.loads((tmp_path / "capped" / "reprolib.json").read_text())["key_caps"]
    layers = {n: m for n, m in plain.named_modules() if getattr(m, "is_cross_attention", False)}
    assert set(caps) == set(layers) and all(len(caps[n]) == m.heads and min(caps[n]) > 0 for n, m in layers.items())
    capped = load_pipeline(tmp_path / "capped", device="cpu").unet
    attn = [m for m in capped.modules() if getattr(m, "is_cross_attention", False)]
    assert len(attn) == 7 and all(isinstance(m.norm_k, KeyCap) for m in attn)


def test_exclusive_loss_counts_the_other_nouns_attention_on_each_objects_pixels():
    """Two objects (top-left and bottom-right quarters), nouns at tokens 1 and 2, token 3 the summary."""
    masks = torch.zeros(1, 2, 16, 16)
    masks[0, 0, :8, :8], masks[0, 1, 8:, 8:] = 1, 1
    pos = torch.tensor([[1, 2]])

    def maps(leak: float) -> dict:
        a = torch.zeros(1, 1, 8, 8, 4)
        a[..., 3] = 1.0  # background pixels read the summary
        a[0, 0, :4, :4, 1], a[0, 0, :4, :4, 2] = 1 - leak, leak  # object 0's pixels: own noun, some of noun 2
        a[0, 0, 4:, 4:, 2] = 1.0  # object 1's pixels read only their own noun
        return {"layer": a.flatten(2, 3)}

    assert float(grounding.exclusive_loss(maps(0.0), pos, masks)) == pytest.approx(0.0, abs=1e-6)
    # object 0 reads 0.3 of noun 2 on all its pixels, object 1 none of noun 1: the mean over the two pairs
    assert float(grounding.exclusive_loss(maps(0.3), pos, masks)) == pytest.approx(0.15)
    # a missing second object leaves no pair; a row left out (--grounding-max-t) does not count
    assert float(grounding.exclusive_loss(maps(0.3), torch.tensor([[1, -1]]), masks)) == 0.0
    assert float(grounding.exclusive_loss(maps(0.3), pos, masks, torch.tensor([False]))) == 0.0
    # where the two masks overlap, attention to either noun is not held against the other
    same = torch.zeros(1, 2, 16, 16)
    same[0, :, :8, :8] = 1
    assert float(grounding.exclusive_loss(maps(0.3), pos, same)) == pytest.approx(0.0, abs=1e-6)


def test_the_grounding_window_holds_timesteps_from_min_to_max():
    t = torch.tensor([10, 499, 500, 700, 999])
    assert grounding.held_rows(t, None, None) is None
    assert grounding.held_rows(t, None, 500).tolist() == [True, True, False, False, False]
    assert grounding.held_rows(t, 700, None).tolist() == [False, False, False, True, True]
    assert grounding.held_rows(t, 499, 700).tolist() == [False, True, True, False, False]


def test_exclusive_layers_are_some_of_the_grounded_ones():
    names = ["down_blocks.0.attentions.0", "down_blocks.1.attentions.0", "mid_block.attentions.0",
             "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.2.attentions.0"]  # fmt: skip
    maps = {n: torch.zeros(1) for n in names}
    assert list(grounding.held_maps(maps, "16x16")) == ["down_blocks.0.attentions.0", "up_blocks.2.attentions.0"]
    assert list(grounding.held_maps(maps, "16x16+last-8x8"))[1] == "up_blocks.1.attentions.1"
    assert len(grounding.held_maps(maps, "outer")) == 5 and len(grounding.held_maps(maps, "all")) == 6
    order = ["16x16", "16x16+last-8x8", "outer", "all"]  # each holds the layers of those before it
    for i, inner in enumerate(order):
        for j, outer in enumerate(order):
            assert grounding.layers_within(inner, outer) == (i <= j), (inner, outer)
