"""A run's output folder: ``config.json`` (the settings that identify the run), ``checkpoints/step_*.pt``,
``history.json`` and ``delta.safetensors``; every file is written atomically (:mod:`reprolib.files`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..checks import InputError
from ..conditioning import TextConditioning
from ..delta import Delta
from ..files import atomic_write, write_json
from ..prompts import PromptConfig

CHECKPOINT_FORMAT = 1
RNG_DERIVATION = "sha256(seed, stream, index) per draw; nothing else"


class RunConflict(InputError, RuntimeError):
    """``out_dir`` holds another run's checkpoints; pass ``overwrite=True`` or another folder."""


def model_name(pipe) -> str:
    """The short name a run records for ``pipe``: the name it was loaded by ("shapes", "sdxl", set by
    :func:`reprolib.pipelines.load_pipeline`), else its path or hub id."""
    return getattr(pipe, "reprolib_model", None) or str(getattr(pipe, "name_or_path", "") or "") or "unnamed pipeline"


def run_settings(
    model: str, cond: TextConditioning, config: PromptConfig, *, init: Delta | None, **kwargs: Any
) -> dict:
    """What makes a run *this* run: a resumed or overwritten folder must agree on all of it.

    ``init`` (the starting delta, if any) enters as a short hash of its vectors.
    """
    prompts = {
        "tag": config.tag,
        "prefixes": list(config.prefixes),
        "pairs": [dataclasses.asdict(p) for p in config.pairs],
    }
    init_id = (
        None
        if init is None
        else hashlib.sha256(b"".join(init.vectors[k].numpy().tobytes() for k in sorted(init.vectors))).hexdigest()[:16]
    )
    return {"model": model, "family": cond.family, "dims": cond.dims, "prompts": prompts, **kwargs, "init": init_id}


@dataclasses.dataclass
class Checkpoint:
    """Everything a run resumes from; the pool is stored as trajectory ids and re-sampled from their seeds."""

    step: int
    delta: dict[str, torch.Tensor]  # on the CPU
    optimizer: dict
    history: list[dict]
    counts: dict[str, int]
    pool: list[list[int]]  # [uid, combination] per cached trajectory ([] for the original scheme)
    next_uid: int
    seed: int

    def to_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "delta": self.delta,
            "optimizer": self.optimizer,
            "history": self.history,
            "counts": self.counts,
            "pool": self.pool,
            "next_uid": self.next_uid,
            "rng": {"seed": self.seed, "derivation": RNG_DERIVATION},
        }

    @classmethod
    def from_dict(cls, d: dict) -> Checkpoint:
        return cls(
            d["step"], d["delta"], d["optimizer"], d["history"], d["counts"], d["pool"], d["next_uid"], d["rng"]["seed"]
        )


class RunFolder:
    """One run's output folder (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def checkpoints(self) -> dict[int, Path]:
        """step → checkpoint file."""
        d = self.path / "checkpoints"
        return {int(p.stem.split("_")[1]): p for p in d.glob("step_*.pt")} if d.is_dir() else {}

    def prepare(self, settings: dict, *, overwrite: bool, resume: bool) -> None:
        """Create the folder; refuse one holding another run (unless ``overwrite``); clear it when starting over."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / "config.json"
        old = json.loads(cfg_file.read_text()).get("settings") if cfg_file.exists() else None
        ours = json.loads(json.dumps(settings))  # compare as JSON sees it (tuples → lists)
        if old != ours and (old is not None or self.checkpoints()) and not overwrite:
            if old is None:
                why = "checkpoints without a config.json (an unknown run)"
            else:
                why = "a run with other settings: " + ", ".join(
                    f"{k}: {old.get(k)!r} there vs {ours.get(k)!r} here"
                    for k in sorted(set(old) | set(ours))
                    if old.get(k) != ours.get(k)
                )
            raise RunConflict(
                f"{self.path} holds {why}. Its checkpoints are kept: pass overwrite=True (--overwrite) "
                "to replace them, or choose another output folder."
            )
        if old != ours or not resume:
            shutil.rmtree(self.path / "checkpoints", ignore_errors=True)
            for name in ("delta.safetensors", "history.json"):
                (self.path / name).unlink(missing_ok=True)

    def write_config(self, settings: dict, **run: Any) -> None:
        """config.json: the settings, then how this invocation ran (steps, device, ...), which may change."""
        write_json(self.path / "config.json", {"settings": settings, **run})

    def latest(self, max_steps: int) -> Checkpoint | None:
        """The last checkpoint at or before ``max_steps``, if any."""
        done = [s for s in self.checkpoints() if s <= max_steps]
        if not done:
            return None
        return Checkpoint.from_dict(torch.load(self.checkpoints()[max(done)], map_location="cpu", weights_only=True))

    def save_checkpoint(self, ck: Checkpoint) -> None:
        """checkpoints/step_NNNNNN.pt, and the history so far."""
        (self.path / "checkpoints").mkdir(exist_ok=True)
        atomic_write(self.path / "checkpoints" / f"step_{ck.step:06d}.pt", lambda p: torch.save(ck.to_dict(), p))
        self.write_history(ck.history)

    def write_history(self, history: list[dict]) -> None:
        write_json(self.path / "history.json", history)

    def write_delta(self, delta: Delta) -> None:
        atomic_write(self.path / "delta.safetensors", delta.save)
