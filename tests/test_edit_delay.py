"""Edit.delay: each edit may begin at its own step; None keeps generate's delay."""

import warnings

import numpy as np
import pytest
import torch

from reprolib.checks import InputError
from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.delta import Delta
from reprolib.edits import Edit, apply_edits
from reprolib.evaluation.__main__ import main as evaluation_cli
from reprolib.evaluation.specificity import COMPOSED_COLOUR_DELAY, COMPOSED_REACH, specificity
from reprolib.generate import edit_stages, generate, prompt_at


def _delta(cond, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Delta({k: scale * torch.randn(d, generator=g) for k, d in cond.dims.items()})


def test_stages_begin_where_each_edit_does(sd15):
    """Two edits with their own delays: unedited states before the first, the first edit alone until the
    second begins, both after; with a fade each stage rises from the one before it."""
    cond = TextConditioning(sd15)
    plain = cond.encode(["a cat and a dog"])
    a, b = _delta(cond, seed=0), _delta(cond, seed=1)
    edits = [Edit(a, "cat", 1.0, None, 0.0), Edit(b, "dog", 1.0)]  # the dog's: generate's delay, 0.4 here
    stages = edit_stages(cond, plain, edits, 10, 0.4, "keys+values")
    assert [s for s, _ in stages] == [0, 4]
    cat = apply_edits(cond, plain, edits[:1])
    both = apply_edits(cond, plain, edits)
    for i, want in [(0, cat), (3, cat), (4, both), (9, both)]:
        torch.testing.assert_close(prompt_at(i, plain, stages, 0).context(), want.context())
    torch.testing.assert_close(prompt_at(4, plain, stages, 1).context(), cat.towards(both, 0.5).context())
    torch.testing.assert_close(prompt_at(0, plain, stages, 1).context(), plain.towards(cat, 0.5).context())
    assert prompt_at(5, plain, [], 0) is plain  # no edits


def test_an_edit_at_generates_delay_is_the_same_edit(shapes_pipe):
    """``Edit.delay`` equal to generate's delay (or None) gives the same picture, bit for bit; an earlier one
    a different picture; an edit begun at step 0 acts even where generate's delay leaves no edited step."""
    size = contrastive_delta(shapes_pipe, "shapes/size")
    kw = dict(seed=3, steps=6, output_type="np")
    prompt = "a red circle and a green square"
    plain = generate(shapes_pipe, prompt, **kw)
    same = generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0)], delay=0.5, **kw)
    own = generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0, None, 0.5)], delay=0.5, **kw)
    early = generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0, None, 0.0)], delay=0.5, **kw)
    np.testing.assert_array_equal(same, own)
    assert np.abs(early - same).max() > 0.05
    with pytest.warns(RuntimeWarning, match="no step that uses the edits"):
        never = generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0)], delay=1.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the edit begins at step 0 whatever generate's delay: nothing to warn of
        from_first = generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0, None, 0.0)], delay=1.0, **kw)
    np.testing.assert_array_equal(never, plain)
    with pytest.warns(RuntimeWarning, match=r"edits\[0\] delay=0.95 .* never applied"):
        generate(shapes_pipe, prompt, edits=[Edit(size, "circle", 2.0, None, 0.95)], **kw)
    np.testing.assert_array_equal(
        from_first, generate(shapes_pipe, prompt, edits=[(size, "circle", 2.0)], delay=0.0, **kw)
    )


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.2"])
def test_a_bad_edit_delay_is_named(sd15, bad):
    cond = TextConditioning(sd15)
    with pytest.raises((InputError, TypeError), match=r"edits\[0\] delay"):
        generate(sd15, "a cat", edits=[Edit(_delta(cond), "cat", 1.0, None, bad)], steps=2)


def test_specificity_composes_with_the_colour_edits_own_delay(shapes_pipe):
    """The composition rows take the colour edit's own delay and say so; a bad one is named before any image."""
    size, colour = contrastive_delta(shapes_pipe, "shapes/size"), contrastive_delta(shapes_pipe, "shapes/colour")
    kw = dict(seeds=[0], steps=4)
    spec = specificity(shapes_pipe, size, colour, reach=COMPOSED_REACH, colour_delay=COMPOSED_COLOUR_DELAY, **kw)
    paper = specificity(shapes_pipe, size, colour, reach=COMPOSED_REACH, **kw)
    assert spec.numbers()["colour_delay"] == 0.0 and paper.numbers()["colour_delay"] is None
    assert "colour edit from 0 of the steps" in spec.format()
    np.testing.assert_equal(
        spec.leak, paper.leak
    )  # NaN: a bystander never found. The size sweep is the same; only the stacked edit's colour starts earlier
    with pytest.raises(InputError, match="colour_delay"):
        specificity(shapes_pipe, size, colour, colour_delay=2.0, **kw)


def test_the_evaluation_cli_names_a_colour_delay_without_specificity():
    with pytest.raises(SystemExit):
        evaluation_cli(["--n", "0", "--order-bias", "10", "--colour-delay", "0"])
