"""Where reprolib says it does what the original code does (issue #17): never-reset guidance counts its
updates as the official loop does, and the optimization-free delta can read the original's token."""

import numpy as np
import pytest
import torch

from reprolib.conditioning import TextConditioning
from reprolib.contrastive import TOKEN_CHOICES, contrastive_delta
from reprolib.evaluation.deltas import size_sweep
from reprolib.layout import LayoutConfig, LayoutGuidance
from reprolib.prompts import PromptConfig, load_config

BOX = {"red circle": (0.0, 0.0, 0.5, 0.5)}


def _run(pipe, steps: int, **cfg):
    """LayoutGuidance over the first ``steps`` DDIM steps of 25 at fixed latents; returns its history."""
    cond = TextConditioning(pipe)
    emb = cond.encode(["a red circle"])
    pipe.scheduler.set_timesteps(25)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    g = LayoutGuidance(cond, emb.tokens, BOX, LayoutConfig(guidance_steps=steps, **cfg), height=64, width=64)
    with g:
        for i, t in enumerate(pipe.scheduler.timesteps[:steps]):
            x = g.before_step(i, t, x, emb)
    return g.history


def test_never_reset_applies_the_update_of_the_evaluation_that_crossed_the_threshold(shapes_pipe):
    """The official loop tests the previous evaluation's loss: with the threshold between the energies before
    and after one update, it makes 2 updates (the second one's energy is already under); reset makes 1."""
    free = _run(shapes_pipe, 1, max_iters=2, loss_threshold=0.0, eta=30.0)
    e0, e1 = free[0]["energy"], free[1]["energy"]
    assert e1 < e0  # the first update lowered the energy
    threshold = (e0 + e1) / 2
    official = _run(shapes_pipe, 3, max_iters=5, loss_threshold=threshold, eta=30.0, reset_each_step=False)
    reset = _run(shapes_pipe, 1, max_iters=5, loss_threshold=threshold, eta=30.0, reset_each_step=True)
    assert [h["updated"] for h in official] == [True, True]  # and nothing at steps 1 and 2: stopped for good
    assert [h["step"] for h in official] == [0, 0]
    assert [h["updated"] for h in reset] == [True, False]
    assert official[1]["energy"] == pytest.approx(e1, rel=1e-5)


def _pair_config(**kw) -> PromptConfig:
    """Size pairs whose phrases do not end in their subject: "big red circle and a blue square"."""
    pairs = [
        {
            "prompt_target": "red circle and a blue square",
            "prompt_positive": "big red circle and a blue square",
            "prompt_negative": "small red circle and a blue square",
            "pattern_target": "circle",
        }
    ]
    return load_config({"tag": "shapes/size-pair", "prompts": pairs, "prefixes": ["a"], **kw})


def test_token_choice_is_checked(shapes_pipe):
    assert TOKEN_CHOICES == ("subject", "last")
    with pytest.raises(ValueError, match="token"):
        contrastive_delta(shapes_pipe, "shapes/size", token="first")


def test_last_token_equals_subject_where_phrases_end_in_their_subject(shapes_pipe):
    """Every shipped config ends its phrases with the subject: the original's choice gives the same delta."""
    for name in ("shapes/size", "shapes/colour"):
        a = contrastive_delta(shapes_pipe, name)
        b = contrastive_delta(shapes_pipe, name, token="last")
        for k in a.vectors:
            assert torch.allclose(a.vectors[k], b.vectors[k], atol=1e-6)
        assert b.meta["token"] == "last" and a.meta["token"] == "subject"


def test_subject_tokens_beat_the_last_token_when_the_phrase_ends_elsewhere(shapes_pipe):
    """On "big red circle and a blue square" the last token is "square": its delta barely grows the circle."""
    cfg = _pair_config()
    subject = contrastive_delta(shapes_pipe, cfg)
    last = contrastive_delta(shapes_pipe, cfg, token="last")
    assert not torch.allclose(subject.vectors["clip"], last.vectors["clip"])
    growth = {}
    for name, d in (("subject", subject), ("last", last)):
        sw = size_sweep(shapes_pipe, d, "a red circle", "circle", ("red", "circle"), alphas=(0.0, 1.5), seeds=range(4))
        growth[name] = float(np.nanmean(sw.target[1]) - np.nanmean(sw.target[0]))
    assert growth["subject"] > 100  # px: the subject's delta makes the circle clearly bigger
    assert growth["last"] < 0.5 * growth["subject"]
