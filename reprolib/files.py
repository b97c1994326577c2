"""Writing files all at once: a crash or a kill never leaves half a checkpoint or half a JSON file behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary sibling of ``path``, then rename it to ``path``."""
    path = Path(path)
    # a sibling, not a temp dir: os.replace is atomic only within one filesystem
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never a partial one


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1)))
