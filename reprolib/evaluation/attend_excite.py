"""The cost of diffusers' Attend-and-Excite pipeline beside the plain pipeline on the same model, interleaved.

Attend-and-Excite (Chefer et al.) is the training-free baseline that Chen et al. compare layout guidance with;
it is measured here for its time per image only (it places no boxes).
"""

from __future__ import annotations

import time

import torch
from diffusers import StableDiffusionAttendAndExcitePipeline  # deprecated module; still exported

from ..attention import cross_attention_layers, default_layers
from ..conditioning import TextConditioning
from ..tokens import token_span


def attend_and_excite_cost(
    pipe,
    prompt: str,
    nouns: list[str],
    seeds,
    steps: int,
    guidance_scale: float,
    warmup: bool = True,
    refine: bool = True,
) -> dict:
    """Seconds per image of diffusers' Attend-and-Excite pipeline and of the plain pipeline, interleaved.

    Built from the loaded pipeline's components (no new weights). Its defaults assume 50 steps
    (alter the first 25, refine at steps 0/10/20); they are scaled to ``steps``. It reads maps of one
    size: the largest of the layers reprolib guides with by default (16×16 for SD 1.5, as A&E's own).
    ``refine=False`` drops its iterative refinement (up to 20 extra gradient steps at a few steps):
    the lower bound of its cost.
    """
    cond = TextConditioning(pipe)
    if cond.family != "sd":
        raise ValueError("Attend-and-Excite has an SD 1.x/2.x pipeline only")
    parts = {
        k: v
        for k, v in pipe.components.items()
        if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker", "feature_extractor")
    }
    ae = StableDiffusionAttendAndExcitePipeline(**parts, requires_safety_checker=False)
    ae.set_progress_bar_config(disable=True)
    tokens = cond.tokenize(prompt)
    indices = [i for n in nouns for i in token_span(tokens, n)]
    sides = dict(cross_attention_layers(pipe.unet))
    res = max(sides[n] for n in default_layers(pipe.unet))
    h, w = cond.default_size()
    kw = dict(num_inference_steps=steps, guidance_scale=guidance_scale, height=h, width=w)
    thresholds = {}
    for k, v in {0: 0.05, 10: 0.5, 20: 0.8}.items():  # official steps of 50; on collisions keep the first
        thresholds.setdefault(round(k * steps / 50), v)
    ae_kw = dict(
        token_indices=indices,
        attn_res=(res, res),
        max_iter_to_alter=round(steps / 2),
        thresholds=thresholds if refine else {},
    )
    times = {"plain": [], "attend-and-excite": []}
    order = ([seeds[0]] if warmup else []) + list(seeds)  # a warm-up run is not timed
    saved = dict(pipe.unet.attn_processors)  # A&E swaps them and restores them only when it finishes
    try:
        for k, seed in enumerate(order):
            for name in times:
                g = torch.Generator().manual_seed(int(seed))
                t = time.perf_counter()
                if name == "plain":
                    pipe(prompt, generator=g, **kw)
                else:
                    ae(prompt, generator=g, **kw, **ae_kw)
                if k >= len(order) - len(seeds):
                    times[name].append(time.perf_counter() - t)
    finally:
        pipe.unet.set_attn_processor(saved)
    plain, excite = (sum(v) / len(v) for v in times.values())
    return {
        "plain_s": plain,
        "attend_and_excite_s": excite,
        "ratio": excite / plain,
        "token_indices": indices,
        "attn_res": res,
        "seeds": len(seeds),
    }
