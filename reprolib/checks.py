"""The one checked boundary: public entry points check their arguments here, before any work.

Every error is an :class:`InputError` (a ``ValueError``; :class:`InputTypeError` is also a ``TypeError``)
whose message names the parameter, the value and the fix. The library's other user-facing errors
(``ConfigError``, ``SpanError``, ``BoxError``, ``DeltaMismatch``, ``ModelNotAvailable``, ``RunConflict``)
subclass it, so a CLI tells a user's mistake from a bug by type alone (:func:`run_cli`).

α: non-finite values are errors; ``|α| >`` :data:`ALPHA_WARN` warns (an edit that far out swamps the
token's own embedding; the papers' sliders stay within about ±10), since a tiny normalised delta may
need a large α.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ALPHA_WARN = 100.0
# what cross-attention reads an edit's tokens for (reprolib.edits.Edit.reach): the paper's both, or values alone
REACHES = ("keys+values", "values")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


class InputError(ValueError):
    """A bad argument (or file, or setting): the message names it, its value and the fix."""


class InputTypeError(InputError, TypeError):
    """An argument of the wrong type."""


class NonFiniteError(FloatingPointError):
    """NaN or inf appeared during sampling, guidance or learning; the message says where."""


USER_ERRORS = (InputError, NonFiniteError)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def integer(value, name: str, *, minimum: int | None = None, fix: str = "") -> int:
    """``value`` as an int (bool, float and str refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be an integer, got {_show(value)} ({type(value).__name__}). {fix}".strip())
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be at least {minimum}, got {value}. {fix}".strip())
    return int(value)


def among(values: Sequence, name: str, allowed: Sequence) -> tuple:
    """``values`` as a tuple, each one of ``allowed`` (the error lists them)."""
    if bad := [v for v in values if v not in allowed]:
        raise InputError(f"{name}={_show(tuple(values))}: {bad[0]!r} is not allowed here; pick from {list(allowed)}")
    return tuple(values)


def count(value, name: str, *, minimum: int = 1) -> int | None:
    """A count such as ``steps``: None (the default) or an int ≥ ``minimum``; 0 is an error, not the default."""
    if value is None:
        return None
    return integer(value, name, minimum=minimum, fix="Pass None for the default.")


def number(value, name: str, *, optional: bool = True, low: float | None = None, high: float | None = None):
    """A finite real number (NaN, ±inf, bool and str refused), optionally in [``low``, ``high``]."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be a number, got {_show(value)} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name} must be a finite number, got {v}: NaN/inf would turn every result into NaN")
    if (low is not None and v < low) or (high is not None and v > high):
        bounds = f"between {low} and {high}"
        bounds = f"at least {low}" if high is None else f"at most {high}" if low is None else bounds
        raise InputError(f"{name} must be {bounds}, got {v}")
    return v


def alpha(value, name: str = "alpha") -> float:
    """An edit's strength: finite; a warning past ±:data:`ALPHA_WARN`."""
    v = number(value, name, optional=False)
    if abs(v) > ALPHA_WARN:
        warnings.warn(
            f"{name}={v:g} is far outside the useful range (|α| ≤ {ALPHA_WARN:g}; sliders use about ±10): "
            "the edit will swamp the token's own embedding",
            RuntimeWarning,
            stacklevel=3,
        )
    return v


def seeds(value, name: str = "seed") -> list[int]:
    """One seed (an int) or a non-empty sequence of ints; ``"12"``, ``1.5`` and ``True`` are refused."""
    many = isinstance(value, Iterable) and not isinstance(value, (str, bytes))
    items = list(value) if many else [value]
    if not items:
        raise InputError(f"{name} is an empty list; give at least one seed (e.g. {name}=0)")
    for s in items:
        integer(s, name, fix=f"Seeds are integers, e.g. {name}=12 or {name}=[0, 1, 2].")
        if not SEED_RANGE[0] <= s <= SEED_RANGE[1]:
            raise InputError(f"{name}={s} is out of torch's seed range [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")
    return [int(s) for s in items]


def prompts(value, name: str = "prompt") -> list[str]:
    """One prompt or a non-empty list of them, all strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise InputTypeError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
    if not items:
        raise InputError(f"{name} is an empty list; give at least one prompt")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise InputTypeError(f"{name} must hold strings only; got {_show(bad[0])} ({type(bad[0]).__name__})")
    return list(items)


def prompt_length(tokenizer, texts: Iterable[str], name: str = "prompt") -> None:
    """Warn once (per call) for every prompt longer than ``tokenizer`` keeps, saying which words are cut."""
    limit = tokenizer.model_max_length
    cut = []
    for text in texts:
        out = tokenizer(text, truncation=False, return_offsets_mapping=True)
        if len(out["input_ids"]) > limit:
            # the tokenizer keeps limit - 1 tokens and its end token: text from the first dropped token is lost
            start = out["offset_mapping"][limit - 1][0]
            cut.append(f"{text[start:]!r} of {_show(text)}")
    if cut:
        warnings.warn(
            f"{name} longer than the tokenizer's {limit} tokens; cut: " + "; ".join(cut) + ". Shorten it.",
            UserWarning,
            stacklevel=3,
        )


def _nearest(value: int, step: int, low: int) -> str:
    down, up = max(low, value // step * step), max(low, -(-value // step) * step)
    return str(down) if down == up else f"{down} or {up}"


def size(pipe, height, width) -> None:
    """``height``/``width``: None (the model's) or a positive multiple of the VAE factor, at least as
    large as the UNet's coarsest map needs (one latent cell per halving: SD 64 px, the shapes world 16)."""
    f = int(pipe.vae_scale_factor)
    halvings = len(pipe.unet.config.down_block_types) - 1
    low = f * 2**halvings
    for name, v in (("height", height), ("width", width)):
        if v is None:
            continue
        integer(v, name, fix="Pass None for the model's size.")
        if v < low or v % f:
            raise InputError(
                f"{name}={v} is not a size this model can make: it must be a multiple of {f} (the VAE's factor) "
                f"and at least {low} (its UNet halves the latent {halvings} times); nearest valid: "
                f"{_nearest(v, f, low)}"
            )


def delay_fraction(
    value,
    steps: int,
    edited: bool,
    name: str = "delay",
    unused: str = "the edits: they are never applied and the image is the unedited one",
    instead: str = " (the default is 0.2)",
) -> float:
    """``delay`` (or an edit's own, ``name``) in [0, 1]; with edits and no edited step left, a warning that says
    what goes ``unused`` (the result is valid, if pointless: a check of "delay=1 changes nothing" asks for it)."""
    v = number(value, name, optional=False, low=0.0, high=1.0)
    if edited and round(v * steps) >= steps:
        warnings.warn(
            f"{name}={v} with steps={steps} leaves no step that uses {unused}; use a delay below "
            f"{(steps - 0.5) / steps:.3g}{instead}",
            RuntimeWarning,
            stacklevel=4,
        )
    return v


def pattern(value, name: str = "pattern") -> None:
    """A token pattern: a non-empty word or phrase, or a compiled ``re.Pattern`` for a regex."""
    if isinstance(value, re.Pattern):
        return
    if not isinstance(value, str):
        raise InputTypeError(f"{name} must be a word of the prompt (str) or a re.Pattern, got {_show(value)}")
    if not value.strip():
        raise InputError(f"{name} is empty; name the word of the prompt to edit (e.g. 'circle')")


def edit_list(value) -> list[tuple]:
    """Each edit an ``Edit`` or a ``(delta, pattern, alpha[, reach[, delay]])`` tuple with a Delta, a pattern, a
    finite α and, when given, a reach of ``REACHES`` and a delay in [0, 1] (None for either: generate's choice)."""
    if value is None:
        return []
    if isinstance(value, tuple) and len(value) in (3, 4, 5) and hasattr(value[0], "vectors"):
        raise InputTypeError("edits is a list of (delta, pattern, alpha); wrap the single edit in a list: [edit]")
    out = []
    for i, e in enumerate(value):
        if not isinstance(e, (tuple, list)) or len(e) not in (3, 4, 5):
            n = len(e) if isinstance(e, (tuple, list)) else type(e).__name__
            raise InputTypeError(
                f"edits[{i}] must be (delta, pattern, alpha), e.g. (size, 'circle', 1.5); got {_show(e)} ({n})"
            )
        d, p, a = e[:3]
        if not hasattr(d, "vectors"):
            raise InputTypeError(f"edits[{i}][0] must be a reprolib Delta, got {type(d).__name__}")
        pattern(p, f"edits[{i}] pattern")
        alpha(a, f"edits[{i}] alpha")
        if len(e) >= 4 and e[3] is not None and e[3] not in REACHES:
            raise InputError(
                f"edits[{i}] reach must be one of {', '.join(map(repr, REACHES))} (what cross-attention reads the "
                f"edited tokens for), got {_show(e[3])}"
            )
        if len(e) == 5 and e[4] is not None:
            number(e[4], f"edits[{i}] delay (a fraction of the steps; None: generate's delay)", low=0.0, high=1.0)
        out.append(tuple(e))
    return out


def sampling(
    pipe,
    prompt,
    seed,
    *,
    steps,
    default_steps: int,
    guidance_scale=None,
    negative_prompt=None,
    edits=(),
    delay=0.0,
    height=None,
    width=None,
) -> list[tuple]:
    """Every argument of a sampling call (:func:`reprolib.generate.generate`), checked; returns the edits
    as a list (an iterator of edits is read once here)."""
    texts = prompts(prompt)
    seeds(seed)
    n = default_steps if count(steps, "steps") is None else steps
    number(guidance_scale, "guidance_scale")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InputTypeError(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    checked = edit_list(edits)
    own = [e[4] if len(e) == 5 else None for e in checked]  # an edit's own delay (Edit.delay), else None
    delay_fraction(delay, n, any(d is None for d in own))
    for i, d in enumerate(own):
        if d is not None:
            delay_fraction(
                d, n, True, f"edits[{i}] delay", "this edit: it is never applied", ", or None for generate's delay"
            )
    size(pipe, height, width)
    prompt_length(pipe.tokenizer, texts + ([negative_prompt] if negative_prompt else []))
    return checked


def step_indices(value, steps: int, name: str = "record_steps") -> list[int] | None:
    """Step indices, each in ``range(steps)``; None means all."""
    if value is None:
        return None
    items = [value] if isinstance(value, numbers.Integral) else list(value)
    for s in items:
        integer(s, name)
        if not 0 <= s < steps:
            raise InputError(f"{name} holds {s}, but the steps are 0 to {steps - 1} (steps={steps})")
    if not items:
        raise InputError(f"{name} is empty: nothing would be recorded; pass None to keep every step")
    return [int(s) for s in items]


def output_path(path, name: str = "--out", *, overwrite: bool = False, folder: bool = False, files=()) -> Path:
    """Check, before any work, that ``path`` can be written without replacing a user's file.

    ``folder``: a folder whose ``files`` must not exist yet (unless ``overwrite``); else a file.
    """
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise InputError(f"{name} {p} is a file, not a folder; choose a folder to write into")
    if not folder and p.is_dir():
        raise InputError(f"{name} {p} is a folder; give a file name")
    taken = [q for q in ([p / f for f in files] if folder else [p]) if q.exists()]
    if taken and not overwrite:
        flag = "--overwrite" if name.startswith("--") else "overwrite=True"
        raise InputError(f"{name}: {taken[0]} exists already; choose another path or pass {flag} to replace it")
    parent = p if folder else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InputError(f"{name} {p} cannot be written: {parent} is not a writable folder")
    return p


def one_line(error: BaseException) -> str:
    """The error's message on one line (CLIs print user errors so)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def run_cli(main: Callable, argv: Sequence[str] | None = None, prog: str = "reprolib") -> int:
    """Run a CLI's ``main(argv)``: a user error prints one ``prog: error: ...`` line and gives exit code 2
    (as argparse does); any other exception is a bug and keeps its traceback."""
    try:
        result = main(argv)
    except USER_ERRORS as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0
