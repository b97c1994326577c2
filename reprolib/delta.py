"""``Delta``: an attribute direction in token-wise text-embedding space, one vector per text encoder.

Saved as safetensors with metadata (model family, dims, how it was made). Also reads the original
CompVis ``attribute-control`` ``.pt`` files safely (``torch.load(weights_only=True)``: tensors only,
no code is unpickled), and fetches those by name: ``Delta.load("person_age")`` (:mod:`reprolib.originals`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .checks import InputError
from .originals import ORIGINAL_DELTAS, original_delta_path

# key names of the original .pt files → our encoder names
ORIGINAL_KEYS = {"tokenwise_delta.oai_clip_vit_l": "clip_l", "tokenwise_delta.openclip_g": "openclip_g"}


class DeltaMismatch(InputError):
    """A delta made for another model (other encoders or dims) than the pipeline it is used with."""


class MissingDelta(InputError, FileNotFoundError):
    """No delta file at the path given, and not the name of an original delta either."""


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` holds safetensors (an 8-byte header length, then a JSON header), whatever its suffix."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


class Delta:
    """One direction per encoder: ``vectors = {"clip_l": Tensor[768], ...}``; ``meta`` says where it came from."""

    def __init__(self, vectors: dict[str, torch.Tensor], meta: dict | None = None):
        if not vectors:
            raise ValueError("a Delta needs at least one encoder's vector")
        self.vectors = {k: v.detach().float().reshape(-1).cpu() for k, v in vectors.items()}
        self.meta = dict(meta or {})
        self.meta.setdefault("dims", {k: v.numel() for k, v in self.vectors.items()})

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}={v.numel()}" for k, v in self.vectors.items())
        tag = self.meta.get("tag", "")
        return f"Delta({tag + ': ' if tag else ''}{dims}, |Δ|={self.norm():.3g})"

    def norm(self) -> float:
        return float(sum(v.pow(2).sum() for v in self.vectors.values()) ** 0.5)

    def __mul__(self, s: float) -> Delta:
        return Delta({k: v * s for k, v in self.vectors.items()}, self.meta)

    __rmul__ = __mul__

    def __add__(self, other: Delta) -> Delta:
        if set(self.vectors) != set(other.vectors):
            raise DeltaMismatch(f"cannot add deltas for encoders {sorted(self.vectors)} and {sorted(other.vectors)}")
        return Delta({k: v + other.vectors[k] for k, v in self.vectors.items()}, self.meta)

    def __neg__(self) -> Delta:
        return self * -1.0

    def __sub__(self, other: Delta) -> Delta:
        return self + (-other)

    def check(self, cond) -> None:
        """Raise :class:`DeltaMismatch` unless this delta fits ``cond`` (a ``TextConditioning``).

        Dims must agree; when the delta records its encoders' fingerprint (reprolib deltas do, the
        original ``.pt`` files do not), the weights must be the ones it was made with, too.
        """
        dims = cond.dims
        mine = {k: v.numel() for k, v in self.vectors.items()}
        made = self.meta.get("model") or self.meta.get("family") or "another model"
        remake = "Use a delta made for this model, or make one with reprolib.contrastive_delta / learn_delta."
        if mine != dims:
            raise DeltaMismatch(
                f"this delta has encoders {mine} (made for {made}) but the pipeline's text encoders are {dims}. "
                + remake
            )
        theirs = self.meta.get("fingerprint")
        if isinstance(theirs, dict):
            ours = cond.fingerprint()
            for name, values in theirs.items():
                a, b = torch.tensor(values), torch.tensor(ours.get(name, [float("nan")] * len(values)))
                if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=1e-3):
                    raise DeltaMismatch(
                        f"this delta was made with other '{name}' text-encoder weights ({made}) than this "
                        "pipeline's: same sizes, different training, so its direction means something else "
                        "here. " + remake
                    )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.meta.items()}
        save_file({k: v.contiguous() for k, v in self.vectors.items()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Delta:
        """Read a reprolib ``.safetensors`` delta, an original attribute-control ``.pt`` file, or an original by
        its name ("person_age", one of :data:`reprolib.originals.ORIGINAL_DELTAS`: downloaded once into a cache)."""
        path = Path(path)
        bare = len(path.parts) == 1 and path.suffix in ("", ".pt")  # a name, not a path
        if not path.exists() and bare and path.stem in ORIGINAL_DELTAS:
            path = original_delta_path(path.stem)
        if not path.exists():
            names = f"; nor is {path.stem!r} one of the original deltas: {', '.join(ORIGINAL_DELTAS)}" if bare else ""
            raise MissingDelta(f"no delta file at {path}{names}")
        if path.is_dir():
            raise InputError(f"{path} is a folder; Delta.load takes a delta file (.safetensors or .pt)")
        if path.suffix == ".pt" and not is_safetensors(path):  # Delta.save("x.pt") writes safetensors
            return cls._load_original(path)
        try:
            vectors = load_file(str(path))
            with safe_open(str(path), "pt") as f:
                raw = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"{path} is not a readable safetensors delta ({e}). Save deltas with Delta.save, "
                "or pass an original attribute-control .pt file."
            ) from None
        meta = {}
        for k, v in raw.items():
            try:
                meta[k] = json.loads(v)
            except json.JSONDecodeError:
                meta[k] = v
        return cls(vectors, meta)

    @classmethod
    def _load_original(cls, path: Path) -> Delta:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt file, or a pickle that needs code: refuse either way
            raise ValueError(
                f"{path} could not be read as a tensors-only .pt delta ({type(e).__name__}: "
                f"{str(e)[:200]}). Only files holding plain tensors are loaded."
            ) from None
        d = obj.get("delta", obj) if isinstance(obj, dict) else None
        vectors = {ORIGINAL_KEYS[k]: v for k, v in (d or {}).items() if k in ORIGINAL_KEYS}
        if not vectors:
            found = list(d or obj)[:5] if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(
                f"{path} holds no attribute-control delta: expected a dict {{'delta': "
                f"{{{', '.join(ORIGINAL_KEYS)}}}}}, found keys {found}"
            )
        family = "sdxl" if set(vectors) == {"clip_l", "openclip_g"} else "sd"
        return cls(
            vectors,
            {"family": family, "method": "original attribute-control .pt", "source": path.name, "tag": path.stem},
        )
