"""contrastive_delta: the mean subject-token difference, per encoder; edits it drives in generate."""

import pytest
import torch

from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.generate import apply_edits, generate
from reprolib.prompts import PromptConfig, load_config
from reprolib.tokens import SpanError, token_span

TWO_PREFIX = {
    "tag": "test/size",
    "prompts": [
        dict(
            prompt_target="red circle",
            prompt_positive="big red circle",
            prompt_negative="small red circle",
            pattern_target="circle",
        ),
        # an unknown word is several byte tokens in the tiny tokenizer: its embedding is their mean
        dict(
            prompt_target="astronaut",
            prompt_positive="big astronaut",
            prompt_negative="small astronaut",
            pattern_target="astronaut",
        ),
    ],
    # the second prefix holds the subject words too: only the pair's own occurrence counts
    "prefixes": ["a", "a blue circle and an astronaut and a"],
}


def hand_delta(pipe, config):
    """The mean over prefix × pair of e₊ − e₋, one prompt at a time, the subject being the last word."""
    cond = TextConditioning(pipe)
    total = {k: torch.zeros(d, dtype=torch.float64) for k, d in cond.dims.items()}
    combos = load_config(config).combinations()
    for prefix, pair in combos:
        n = len(cond.tokenizer.tokenize(pair.pattern))
        for text, sign in ((pair.positive, 1), (pair.negative, -1)):
            emb = cond.encode(PromptConfig.join(prefix, text))
            last = max(i for i, s in enumerate(emb.tokens[0].special) if not s)
            for k, s in emb.states.items():
                total[k] += sign * s[0, last - n + 1 : last + 1].double().mean(0)
    return {k: (v / len(combos)).float() for k, v in total.items()}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_dims_and_meta(family, request):
    pipe = request.getfixturevalue(family)
    cond = TextConditioning(pipe)
    d = contrastive_delta(pipe, "shapes/size")
    assert {k: v.numel() for k, v in d.vectors.items()} == cond.dims
    assert len(d.vectors) == (2 if family == "sdxl" else 1)
    assert d.meta["family"] == cond.family and d.meta["method"] == "contrastive"
    assert d.meta["tag"] == "shapes/size" and d.meta["n_pairs"] == len(load_config("shapes/size").combinations())
    assert d.meta["dims"] == cond.dims and "model" in d.meta
    assert all(torch.isfinite(v).all() and v.norm() > 0 for v in d.vectors.values())
    d.check(cond)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_equals_hand_computed_mean(family, request):
    pipe = request.getfixturevalue(family)
    assert len(pipe.tokenizer.tokenize("astronaut")) > 1  # the multi-token case is really exercised
    want = hand_delta(pipe, TWO_PREFIX)
    for bs in (1, 3, 64):  # batching must not change the answer
        got = contrastive_delta(pipe, TWO_PREFIX, batch_size=bs)
        for k in want:
            torch.testing.assert_close(got.vectors[k], want[k], rtol=1e-5, atol=1e-6)


def test_positive_and_negative_patterns(sd15):
    cfg = {
        "tag": "t",
        "prompts": [
            dict(
                prompt_target="circle",
                prompt_positive="big circle",
                prompt_negative="small square",
                pattern_target="circle",
                pattern_negative="square",
            )
        ],
        "prefixes": ["a"],
    }
    cond = TextConditioning(sd15)
    pos, neg = cond.encode(["a big circle", "a small square"]).states["clip"]
    d = contrastive_delta(sd15, cfg)
    torch.testing.assert_close(d.vectors["clip"], pos[3] - neg[3])


def test_pattern_only_in_prefix_is_an_error(sd15):
    cfg = {
        "tag": "t",
        "prompts": [
            dict(
                prompt_target="circle",
                prompt_positive="big circle",
                prompt_negative="small circle",
                pattern_target="square",
            )
        ],
        "prefixes": ["a blue square and a"],
    }
    with pytest.raises(SpanError, match="prefix"):
        contrastive_delta(sd15, cfg)


def latents(pipe, **kw):
    return generate(pipe, "a red circle and a blue square", seed=3, steps=3, output_type="latent", **kw)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_alpha_zero_and_full_delay_are_the_plain_image(family, request):
    pipe = request.getfixturevalue(family)
    size = contrastive_delta(pipe, "shapes/size")
    plain = latents(pipe)
    assert torch.equal(latents(pipe, edits=[(size, "circle", 0.0)], delay=0.0), plain)
    with pytest.warns(RuntimeWarning, match="never applied"):  # said, not silent
        assert torch.equal(latents(pipe, edits=[(size, "circle", 50.0)], delay=1.0), plain)
    # and the edit does act when it is applied (the two checks above could otherwise pass vacuously)
    assert not torch.equal(latents(pipe, edits=[(size, "circle", 50.0)], delay=0.0), plain)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_two_edits_change_only_their_tokens(family, request):
    pipe = request.getfixturevalue(family)
    cond = TextConditioning(pipe)
    size, colour = contrastive_delta(pipe, "shapes/size"), contrastive_delta(pipe, "shapes/colour")
    emb = cond.encode(["a red circle and a blue square", "a blue square and a red circle"])
    edits = [(size, "circle", 1.5), (colour, "square", -0.5)]
    out = apply_edits(cond, emb, edits)
    swapped = apply_edits(cond, emb, edits[::-1])
    for b, toks in enumerate(emb.tokens):
        circle, square = token_span(toks, "circle"), token_span(toks, "square")
        for k in cond.dims:
            diff = (out.states[k] - emb.states[k])[b]
            torch.testing.assert_close(diff[circle], 1.5 * size.vectors[k].expand(len(circle), -1))
            torch.testing.assert_close(diff[square], -0.5 * colour.vectors[k].expand(len(square), -1))
            rest = [i for i in range(diff.shape[0]) if i not in circle + square]
            assert diff[rest].abs().max() == 0
            torch.testing.assert_close(swapped.states[k], out.states[k])
    if emb.pooled is not None:  # deltas are token-wise: the pooled embedding stays
        assert torch.equal(out.pooled, emb.pooled)


def test_edit_on_missing_word(sd15):
    size = contrastive_delta(sd15, "shapes/size")
    with pytest.raises(SpanError, match="triangle"):
        latents(sd15, edits=[(size, "triangle", 1.0)])


def test_composition_benchmark_reads_where_each_words_attention_goes(shapes_pipe, bench_script):
    bench = bench_script("composition")
    size = contrastive_delta(shapes_pipe, "shapes/size")
    prompt = bench.PROMPT.format("green")
    plain = bench.attention_shares(shapes_pipe, prompt, [], 0.2, [0])
    grown = bench.attention_shares(shapes_pipe, prompt, [(size, "red circle", 2.0)], 0.2, [0])
    assert all(0 <= v < 1 for v in plain + grown) and sum(plain) < 1
    words = bench.words(prompt)
    assert all(plain[words.index(n)] > 0 for n in ("circle", "square"))  # v2 reads only its nouns: the rest 0
    circle = words.index("circle")
    assert grown[circle] > 1.25 * plain[circle]  # a grown circle's noun holds more of the picture's attention


def test_composition_benchmarks_length_cases_keep_a_direction_and_swap_a_length(shapes_pipe, bench_script):
    bench = bench_script("composition")
    prompt = bench.PROMPT.format("yellow")
    base = bench.token_of(shapes_pipe, prompt)
    genuine = bench.token_of(shapes_pipe, "a big blue circle and a yellow square")
    stacked = 2 * base  # any edit: a token twice as long, same direction
    cases = {k: base + d.vectors["clip"] for k, d in bench.length_cases(shapes_pipe, prompt, stacked).items()}
    torch.testing.assert_close(cases["genuine big blue"], genuine)
    cos = torch.nn.functional.cosine_similarity
    stretched, shrunk = cases["genuine, stretched"], cases["stacked, shrunk"]
    assert float(cos(stretched, genuine, dim=0)) == pytest.approx(1, abs=1e-5)
    assert float(stretched.norm()) == pytest.approx(3 * float(base.norm()), rel=1e-4)
    assert float(cos(shrunk, base, dim=0)) == pytest.approx(1, abs=1e-5)
    assert float(shrunk.norm()) == pytest.approx(float(genuine.norm()), rel=1e-4)
