"""Load a ready diffusers pipeline: the embedded shapes world, a known SD model, a hub id or a folder.

| name     | what                         | hub id                                         |
|----------|------------------------------|------------------------------------------------|
| `shapes` | embedded shapes-world model  | (ships inside reprolib, no download)           |
| `sd15`   | Stable Diffusion 1.5         | `stable-diffusion-v1-5/stable-diffusion-v1-5`  |
| `sd21`   | Stable Diffusion 2.1 (768)   | `stabilityai/stable-diffusion-2-1`             |
| `sdxl`   | Stable Diffusion XL base 1.0 | `stabilityai/stable-diffusion-xl-base-1.0`     |

`tiny-sd15`, `tiny-sd21` and `tiny-sdxl` are random tiny pipelines built from config
(:mod:`reprolib.tiny`): they make no pictures worth seeing, but check a script end to end offline.
``load_pipeline("sdxl", random_weights=True)`` is the true architecture with random weights, built offline
(:mod:`reprolib.architectures`): real sizes, memory and layer layout, no real pictures.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import diffusers
import torch

from .architectures import FAMILIES, random_pipeline
from .checks import InputError, InputTypeError
from .device import pick_device, pick_dtype
from .quiet import no_progress_bars, quiet
from .shapes.model import cap_keys, normalise_keys
from .tiny import tiny_pipeline

KNOWN_MODELS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
SHAPES_DIR = Path(__file__).parent / "shapes" / "weights"
TINY_MODELS = ("tiny-sd15", "tiny-sd21", "tiny-sdxl")


class ModelNotAvailable(InputError, RuntimeError):
    """The model's weights are not here and cannot be fetched; the message says how to get them."""


def resolve(model: str | os.PathLike) -> str:
    """A known name → its hub id; a folder stays a folder; anything else is taken as a hub id."""
    if isinstance(model, os.PathLike) or Path(str(model)).exists():
        return str(model)
    if model == "shapes":
        return str(SHAPES_DIR)
    return KNOWN_MODELS.get(str(model), str(model))


def read_json(path: Path) -> dict:
    """A model folder's JSON file, or an :class:`InputError` naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is broken: not valid JSON ({e}); restore it from where the model came from") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is broken: it holds a {type(data).__name__}, not a JSON object")
    return data


def _pipeline_class(path_or_id: str):
    index = Path(path_or_id) / "model_index.json"
    if index.exists():
        name = read_json(index).get("_class_name", "DiffusionPipeline")
        return getattr(diffusers, name, diffusers.DiffusionPipeline)
    return diffusers.DiffusionPipeline


def check_model(model) -> None:
    """A known name, an existing folder, or a hub id ("owner/name"); else an error listing the known names."""
    if not isinstance(model, (str, os.PathLike)):
        raise InputTypeError(f"model must be a name, hub id or folder (str or path), got {type(model).__name__}")
    text = str(model)
    if isinstance(model, os.PathLike) or Path(text).exists() or text in (*KNOWN_MODELS, *TINY_MODELS, "shapes"):
        if isinstance(model, os.PathLike) and not Path(text).exists():
            raise InputError(f"model folder {text} does not exist; check the path")
        return
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if looks_like_path:
        raise InputError(f"model folder {text} does not exist; check the path (a hub id is 'owner/name')")
    if "/" not in text:
        known = ", ".join(["shapes", *KNOWN_MODELS, *TINY_MODELS])
        raise InputError(f"unknown model name {text!r}; known names: {known} (or a hub id 'owner/name', or a folder)")


def load_pipeline(
    model: str | os.PathLike = "shapes",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    random_weights: bool = False,
    **kwargs,
):
    """A ready diffusers pipeline on the chosen device/dtype, progress bars off under CI.

    ``model``: ``"shapes"`` (embedded), ``"sd15"``, ``"sd21"``, ``"sdxl"``, another hub id, a local
    pipeline folder, or ``"tiny-sd15"`` / ``"tiny-sd21"`` / ``"tiny-sdxl"`` (random, offline, for
    checking scripts). Extra keyword arguments go to ``from_pretrained``.
    ``random_weights=True`` (with ``"sd15"``, ``"sd21"`` or ``"sdxl"``): the true architecture with random
    weights, offline; extra keyword arguments go to :func:`reprolib.architectures.random_pipeline`
    (``on_meta=["unet"]`` leaves a component without memory).
    """
    quiet()
    check_model(model)
    dev = pick_device(device)
    if random_weights:
        return random_weights_pipeline(str(model), dev, pick_dtype(dev, dtype), **kwargs)
    if str(model) in TINY_MODELS:
        # random weights are built in fp32; another dtype only when asked for
        pipe = tiny_pipeline(str(model).removeprefix("tiny-")).to(dev, pick_dtype(torch.device("cpu"), dtype))
        pipe.set_progress_bar_config(disable=True)
        pipe.reprolib_model = str(model)
        return pipe
    dt = pick_dtype(dev, dtype)
    src = resolve(model)
    local = Path(src)
    if model == "shapes" and not (local / "model_index.json").exists():
        raise ModelNotAvailable(
            f"the embedded shapes-world weights are missing from {local}. Train and export them with\n"
            "  python -m reprolib.shapes.train --out runs/shapes\n"
            f"  python -m reprolib.shapes.train --out runs/shapes --export {local}"
        )
    if local.exists() and not (local / "model_index.json").exists():
        raise ModelNotAvailable(
            f"{local} is a folder but not a diffusers pipeline (no model_index.json in it). Point to the "
            "folder that `pipe.save_pretrained(...)` or `hf download <repo id> --local-dir <folder>` wrote."
        )
    cls = _pipeline_class(src)
    try:
        # a local folder loads in seconds: no "Loading pipeline components" widgets left in notebooks
        with no_progress_bars() if local.exists() else contextlib.nullcontext():
            pipe = cls.from_pretrained(src, dtype=dt, **kwargs)
    except (OSError, ValueError) as e:  # huggingface_hub's offline/missing-repo errors arrive as these
        if local.exists():
            raise InputError(
                f"{local} has a model_index.json but its pipeline could not be loaded "
                f"({type(e).__name__}: {str(e)[:300]}); a component folder is missing or broken"
            ) from e
        hint = f" (the '{model}' entry of reprolib.pipelines.KNOWN_MODELS)" if model in KNOWN_MODELS else ""
        raise ModelNotAvailable(
            f"could not load '{src}'{hint}: it is not in the local Hugging Face cache and could not be "
            f"downloaded ({type(e).__name__}). On a machine with internet access run\n"
            f"  hf download {src} --local-dir models/{src.split('/')[-1]}\n"
            f"then pass that folder: load_pipeline('models/{src.split('/')[-1]}')."
        ) from None
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=bool(os.environ.get("CI")))
    pipe.reprolib_defaults = model_defaults(local)
    if pipe.reprolib_defaults.get("key_norm"):  # a model trained with its keys normalised samples the same way
        normalise_keys(pipe.unet)
    if pipe.reprolib_defaults.get("key_caps"):  # no key longer than a caption's (model.cap_keys)
        cap_keys(pipe.unet, pipe.reprolib_defaults["key_caps"])
    # the short name runs and reports record ("shapes", "sdxl"), also when loaded by its hub id
    pipe.reprolib_model = next((k for k, v in KNOWN_MODELS.items() if v == str(model)), str(model))
    return pipe


def random_weights_pipeline(model: str, device: torch.device, dtype: torch.dtype, **kwargs):
    """``load_pipeline(model, random_weights=True)``: the family's true architecture, random weights."""
    if model not in FAMILIES:
        raise ValueError(
            f"random_weights=True builds the true architecture of one of {FAMILIES}, not {model!r} "
            "(the tiny-* names are random already)"
        )
    pipe = random_pipeline(model, dtype=dtype, device=device, **kwargs)
    pipe.reprolib_model = f"random-{model}"  # what runs record: never to be mistaken for the real weights
    return pipe


def model_defaults(folder: Path) -> dict:
    """What a model folder's ``reprolib.json`` declares (sampling steps, guidance scale), or nothing.

    The shapes world ships one (25 steps, guidance 5); :func:`reprolib.generate.defaults` reads it.
    """
    path = Path(folder) / "reprolib.json"
    return read_json(path) if path.is_file() else {}


def describe(pipe) -> str:
    """One line per component: its class and parameter count (the parts chapter 01 takes apart)."""
    lines = []
    for name, comp in pipe.components.items():
        if comp is None:
            continue
        n = sum(p.numel() for p in comp.parameters()) if hasattr(comp, "parameters") else None
        size = f"{n / 1e6:8.2f} M parameters" if n else ""
        lines.append(f"{name:<15} {type(comp).__name__:<28} {size}")
    return "\n".join(lines)


def try_load(model: str, *, need_gpu: bool = True, **kwargs):
    """The pipeline if it can run here (weights present, and a GPU when ``need_gpu``), else None and a message.

    For the chapters' real-model cells: they are skipped with this message on a CPU-only machine.
    """
    if need_gpu and pick_device().type != "cuda":
        print(f"skipped: '{model}' needs a CUDA GPU; this machine has none. The same cell runs unchanged on one.")
        return None
    try:
        return load_pipeline(model, **kwargs)
    except ModelNotAvailable as e:
        print(f"skipped: {e}")
        return None
