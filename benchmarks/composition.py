"""Why stacked edits lose the bystander (#13): which object each edit keeps, and the deltas' size in text space.

    python benchmarks/composition.py                                   # the shipped model, 8 seeds
    python benchmarks/composition.py --model checkpoints_export_dir --seeds 12
    python benchmarks/composition.py --delays 0 0.2 0.4                # edits from the first step, and later
    python benchmarks/composition.py --attention                       # where each word's attention goes
    python benchmarks/composition.py --colour runs/colour/delta.safetensors   # another colour delta (e.g. learned)
    python benchmarks/composition.py --bystander yellow                 # the bystander in the colour furthest from blue
    python benchmarks/composition.py --length                           # is it the edited token's length?

On "a red circle and a green square", edits on the circle only: the colour delta (red → blue) at α = 1, the
size delta at α = 2, both stacked (the composition bar's edits). For each, the share of seeds whose picture
still holds the circle (any colour; a red one; a blue one) and the green square, by the ruler, for each edit
delay asked for (the library's default, 0.2, alone unless ``--delays``). Then the norms of the two deltas, of
the stacked edit and of the circle's token they are added to.

``--bystander yellow``: the same with "a yellow square" (green is the colour nearest blue). ``--length``: three more
edits that tell the stacked edit's direction from its length: the circle's token replaced by the genuine "big
blue circle" token (the same prompt with those words, encoded); that token stretched to the stacked edit's
length; and the stacked edit shrunk to the genuine token's length.

``--attention``: for each edit, each word's share of the guided layers' cross-attention (conditional
branch, mean over heads, pixels, the guided layers and the edited steps), averaged over the seeds: an edit
that makes its subject's tokens take the bystander's attention starves the bystander's words.
"""

import argparse

import numpy as np
import torch

import reprolib
from reprolib.attention import default_layers
from reprolib.conditioning import TextConditioning
from reprolib.contrastive import contrastive_delta
from reprolib.delta import Delta
from reprolib.edits import Edit
from reprolib.evaluation.specificity import subject_pattern
from reprolib.generate import DELAY, defaults, first_edited_step
from reprolib.shapes import measure
from reprolib.tokens import token_span

PROMPT = "a red circle and a {} square"


def attention_shares(pipe, prompt: str, edits, delay: float, seeds: list[int]) -> list[float]:
    """Each word of ``prompt`` but the articles: its share of the guided layers' attention over the edited
    steps, mean over ``seeds``."""
    steps = defaults(pipe)[0]
    layers = default_layers(pipe.unet)
    shares = np.zeros(len(words(prompt)))
    for seed in seeds:
        maps = reprolib.attention_maps(
            pipe, prompt, seed=seed, edits=edits, delay=delay, layers=layers,
            record_steps=range(first_edited_step(steps, delay), steps),
        )  # fmt: skip
        shares += [float(maps.word(w).mean()) * len(token_span(maps.tokens, w)) for w in words(prompt)]
    return list(shares / len(seeds))


def words(prompt: str) -> list[str]:
    return [w for w in prompt.split() if w not in ("a", "and")]


def token_of(pipe, prompt: str) -> torch.Tensor:
    """The circle's text state in ``prompt``."""
    with torch.no_grad():
        encoded = TextConditioning(pipe).encode([prompt])
    return encoded.states["clip"][0, encoded.tokens[0].tokens.index("circle</w>")]


def length_cases(pipe, prompt: str, stacked: torch.Tensor) -> dict[str, Delta]:
    """Edits that replace the circle's token: the genuine "big blue circle" one, it stretched, the stack shrunk."""
    base, genuine = token_of(pipe, prompt), token_of(pipe, prompt.replace("red circle", "big blue circle"))
    edited = base + stacked
    return {
        "genuine big blue": Delta({"clip": genuine - base}),
        "genuine, stretched": Delta({"clip": genuine * (edited.norm() / genuine.norm()) - base}),
        "stacked, shrunk": Delta({"clip": edited * (genuine.norm() / edited.norm()) - base}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--delays", type=float, nargs="+", default=[DELAY], help="edit delays, side by side")
    p.add_argument("--colour", help="a colour delta file to use instead of the contrastive one")
    p.add_argument("--attention", action="store_true", help="also each word's share of the guided layers' attention")
    p.add_argument("--bystander", choices=("green", "yellow"), default="green", help="the square's colour")
    p.add_argument("--length", action="store_true", help="also the genuine, stretched and shrunk tokens (see above)")
    a = p.parse_args()
    prompt = PROMPT.format(a.bystander)
    pipe = reprolib.load_pipeline(a.model)
    size = contrastive_delta(pipe, "shapes/size")
    colour = Delta.load(a.colour) if a.colour else contrastive_delta(pipe, "shapes/colour")
    circle = subject_pattern("red", "circle")
    cases = {
        "no edit": [],
        "colour +1": [Edit(colour, circle, 1.0)],
        "size +2": [Edit(size, circle, 2.0)],
        "size +2 & colour +1": [Edit(size, circle, 2.0), Edit(colour, circle, 1.0)],
    }
    s, c = size.vectors["clip"], colour.vectors["clip"]
    if a.length:
        cases |= {k: [Edit(d, circle, 1.0)] for k, d in length_cases(pipe, prompt, 2 * s + c).items()}
    print(f"{prompt!r}, edits on the circle, {a.seeds} seeds: share of pictures that hold each object")
    square = f"{a.bystander} square"
    print(f"{'delay':<7}{'edit':<22}{'circle (any colour)':>21}{'red circle':>12}{'blue circle':>13}{square:>14}")
    for delay in a.delays:
        for name, edits in cases.items():
            images = reprolib.generate(pipe, prompt, seed=list(range(a.seeds)), edits=edits, delay=delay)
            found = [measure.measure(np.asarray(im)) for im in images]
            shares = [
                np.mean([any(f.shape == "circle" for f in objs) for objs in found]),
                *[np.mean([measure.find(objs, c, "circle") is not None for objs in found]) for c in ("red", "blue")],
                np.mean([measure.find(objs, a.bystander, "square") is not None for objs in found]),
            ]
            print(f"{delay:<7g}{name:<22}" + "".join(f"{v:>{w}.2f}" for v, w in zip(shares, (21, 12, 13, 14))))
            if a.attention:
                shares = attention_shares(pipe, prompt, edits, delay, list(range(a.seeds)))
                print(f"{'':<29}attention share: " + ", ".join(f"{w} {v:.3f}" for w, v in zip(words(prompt), shares)))
    token = token_of(pipe, prompt)
    print(
        f"norms in text space: colour Δ {c.norm():.2f}, size Δ {s.norm():.2f}, "
        f"2·size + colour {(2 * s + c).norm():.2f}, the circle's token {token.norm():.2f}"
    )


if __name__ == "__main__":
    main()
