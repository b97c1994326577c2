"""Library chatter: import-time notices off everywhere, progress bars off under CI or for a moment.

Imported first by ``reprolib/__init__.py``, so the environment default is in place before
diffusers/transformers are imported (they read it at import).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keeps import-time notices out of notebooks

from diffusers.utils import logging as dlog  # noqa: E402  (after the environment default above)
from transformers.utils import logging as tlog  # noqa: E402


def quiet() -> None:
    """Silence progress bars and library chatter when running under CI (``$CI`` set)."""
    if not os.environ.get("CI"):
        return
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    dlog.set_verbosity_error(), tlog.set_verbosity_error()


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """diffusers' and transformers' progress bars off inside the block, as they were after it.

    Loading a small local model takes a second: its bars would only leave "Loading weights" widgets in a
    notebook (which a saved notebook cannot show again). Long work outside the block keeps its bars.
    """
    before = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar(), tlog.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            dlog.enable_progress_bar()
        if before[1]:
            tlog.enable_progress_bar()
