"""Edit.reach: an edit that reaches cross-attention's values alone, its keys made from the unedited tokens."""

import numpy as np
import pytest
import torch

from reprolib.attention import cross_attention_layers, record_attention
from reprolib.checks import InputError
from reprolib.conditioning import Embeddings, TextConditioning
from reprolib.delta import Delta
from reprolib.edits import Edit, apply_edits
from reprolib.evaluation.__main__ import main as evaluation_cli
from reprolib.evaluation.specificity import specificity
from reprolib.generate import INVERSION_REACH, generate
from reprolib.inversion import invert
from reprolib.widgets import Attribute, attribute_slider


def _delta(cond, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Delta({k: scale * torch.randn(d, generator=g) for k, d in cond.dims.items()})


def test_values_reach_edits_the_states_and_keeps_the_keys(any_tiny):
    """Per encoder: a values-only edit changes the states but not the key states; a keys+values edit beside it
    changes both; batching and fading carry the key states along (the other prompts' keys are their states)."""
    cond = TextConditioning(any_tiny)
    plain = cond.encode(["a cat and a dog"])
    a, b = _delta(cond, seed=0), _delta(cond, seed=1)
    out = apply_edits(cond, plain, [Edit(a, "cat", 1.0, "values"), Edit(b, "dog", 1.0)])
    both = apply_edits(cond, plain, [Edit(b, "dog", 1.0)])
    assert apply_edits(cond, plain, [Edit(b, "dog", 1.0)]).keys is None  # the paper's edits: nothing apart
    for name in cond.dims:
        assert not torch.equal(out.states[name], both.states[name])  # the cat's values moved
        torch.testing.assert_close(out.keys[name], both.states[name])  # its keys did not; the dog's did
    batch = Embeddings.cat([plain, out])
    assert torch.equal(batch.key_context()[:1], plain.context())
    assert torch.equal(batch.key_context()[1:], both.context())
    assert torch.equal(batch[1].key_context(), out.key_context())
    half = plain.towards(out, 0.5)
    torch.testing.assert_close(half.key_context(), plain.towards(both, 0.5).context())


def test_values_reach_keeps_where_each_word_attends(sd15):
    """One UNet call: with the edit on values alone, the first cross-attention layer's maps are the unedited
    prompt's (same latents, same keys; later layers see the new values' effect in their queries) while the
    output moves; with the paper's reach they move. The fused processor and the recording one agree, and every
    layer gets its own key projection back."""
    cond = TextConditioning(sd15)
    plain = cond.encode(["a cat and a dog"])
    d = _delta(cond)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    layers = [n for n, _ in cross_attention_layers(sd15.unet)]
    runs = {}
    for name, emb in {
        "plain": plain,
        "values": apply_edits(cond, plain, [Edit(d, "cat", 2.0, "values")]),
        "both": apply_edits(cond, plain, [Edit(d, "cat", 2.0)]),
    }.items():
        with torch.no_grad():
            fused = cond.unet(x, t, emb)
            with record_attention(sd15.unet, layers) as store:
                recorded = cond.unet(x, t, emb)
        torch.testing.assert_close(fused, recorded)
        runs[name] = (fused, {n: store.get(n) for n in layers})
    assert not torch.allclose(runs["values"][0], runs["plain"][0])
    first = layers[0]
    torch.testing.assert_close(runs["values"][1][first], runs["plain"][1][first])
    assert not torch.allclose(runs["both"][1][first], runs["plain"][1][first])
    assert not torch.allclose(runs["values"][1][layers[-1]], runs["plain"][1][layers[-1]])
    assert all(
        isinstance(m.to_k, torch.nn.Linear) for m in sd15.unet.modules() if getattr(m, "is_cross_attention", False)
    )


@pytest.mark.parametrize("family", ["sd21", "sdxl"])
def test_values_reach_generates_with_edits_and_boxes(family, request):
    """generate takes it on every family, with layout guidance too; a zero α is the unedited picture."""
    pipe = request.getfixturevalue(family)
    cond = TextConditioning(pipe)
    d = _delta(cond)
    kw = dict(seed=0, steps=3, output_type="latent")
    plain = generate(pipe, "a cat and a dog", **kw)
    still = generate(pipe, "a cat and a dog", edits=[Edit(d, "cat", 0.0, "values")], **kw)
    torch.testing.assert_close(still, plain)
    moved = generate(pipe, "a cat and a dog", edits=[(d, "cat", 2.0, "values")], delay=0.0, **kw)
    assert not torch.allclose(moved, plain)
    boxes = {"cat": (0.0, 0.0, 0.5, 0.5)}
    guided = generate(pipe, "a cat and a dog", edits=[(d, "cat", 2.0, "values")], boxes=boxes, **kw)
    assert torch.isfinite(guided).all()


def test_a_wrong_reach_is_refused_by_name(sd15):
    cond = TextConditioning(sd15)
    with pytest.raises(InputError, match=r"reach=\('values', 'all'\): 'all' is not allowed here"):
        specificity(sd15, _delta(cond), reach=("values", "all"))
    with pytest.raises(InputError, match="reach is the size and the colour edits' reach"):
        specificity(sd15, _delta(cond), reach=("values",))
    with pytest.raises(InputError, match=r"edits\[0\] reach must be one of 'keys\+values', 'values'.*'keys'"):
        generate(sd15, "a cat", edits=[(_delta(cond), "cat", 1.0, "keys")], steps=2)
    with pytest.raises(SystemExit):
        evaluation_cli(["--n", "0", "--order-bias", "10", "--reach", "values", "values"])


def test_the_slider_takes_a_reach_per_attribute(sd15):
    """``Attribute(..., reach="values")``: each frame is generate's image with that reach; a bad reach is refused
    before the first frame."""
    cond = TextConditioning(sd15)
    d = _delta(cond)
    kw = dict(seed=1, steps=2, delay=0.0, prefetch=0, values=(-2.0, 2.0, 1.0))
    s = attribute_slider(sd15, "a cat and a dog", [Attribute(d, "cat", "cat", reach="values")], **kw)
    frame = s.render((2.0,))
    image = generate(sd15, "a cat and a dog", seed=1, steps=2, delay=0.0, edits=[(d, "cat", 2.0, "values")])
    paper = generate(sd15, "a cat and a dog", seed=1, steps=2, delay=0.0, edits=[(d, "cat", 2.0)])
    assert np.array_equal(np.asarray(frame), np.asarray(image))
    assert not np.array_equal(np.asarray(frame), np.asarray(paper))
    with pytest.raises(InputError, match=r"reach must be one of"):
        attribute_slider(sd15, "a cat and a dog", [Attribute(d, "cat", reach="all")], **kw)


def test_an_inverted_pictures_edits_reach_the_values_unless_told(sd15):
    """``reach=None`` (the default) is generate's choice: values alone from an inversion (INVERSION_REACH), the
    paper's keys and values from noise; an explicit reach is kept in both."""
    cond = TextConditioning(sd15)
    d = _delta(cond)
    rng = np.random.default_rng(0)
    inv = invert(sd15, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "a cat and a dog", steps=3, verify=False)
    kw = dict(output_type="latent", delay=0.0, local_blend=False)

    def run(reach, **more):
        return generate(sd15, "a cat and a dog", edits=[Edit(d, "cat", 2.0, reach)], **kw, **more)

    assert INVERSION_REACH == "values"
    torch.testing.assert_close(run(None, inversion=inv), run("values", inversion=inv))
    assert not torch.allclose(run("keys+values", inversion=inv), run("values", inversion=inv))
    noise = dict(seed=0, steps=3)
    torch.testing.assert_close(run(None, **noise), run("keys+values", **noise))
    assert not torch.allclose(run("values", **noise), run("keys+values", **noise))
