"""Library chatter: import-time notices off everywhere, progress bars off under CI.

Imported first by ``reprolib/__init__.py``, so the environment default is in place before
diffusers/transformers are imported (they read it at import).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keeps import-time notices out of notebooks

from diffusers.utils import logging as dlog  # noqa: E402  (after the environment default above)
from transformers.utils import logging as tlog  # noqa: E402


def quiet() -> None:
    """Silence progress bars and library chatter when running under CI (``$CI`` set)."""
    if not os.environ.get("CI"):
        return
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    dlog.set_verbosity_error(), tlog.set_verbosity_error()
