"""Work shared between processes by accelerate: each process takes its slice of the cases, every result is
gathered, in order, and only the main process writes.

    accelerate launch --num_processes 4 -m reprolib.reproduce --model sdxl --out report/   # 4 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m reprolib.reproduce --model shapes ...  # 2 CPU processes

(On a machine without CUDA, ``--multi_gpu`` starts the processes through torchrun and they talk over gloo;
accelerate's ``--cpu`` flag alone starts one process unless MPI is set up.) A plain ``python -m`` run is one
process of one: the same code, no launcher needed. A unit of work (one seed, one case) is computed the same way
wherever it runs, so the gathered numbers equal a one-process run's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm


class Workers:
    """The processes of this run (accelerate's :class:`PartialState`): ``map`` shares items out and gathers."""

    def __init__(self, state: PartialState | None = None):
        # without CUDA the state must be told to use the CPU, or each process believes it is alone
        self.state = state or PartialState(cpu=not torch.cuda.is_available())

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def count(self) -> int:
        return self.state.num_processes

    @property
    def device(self) -> torch.device:
        return self.state.device

    def map(self, fn: Callable[[Any], Any], items: Iterable, desc: str | None = None) -> list:
        """``[fn(x) for x in items]``, the items split between processes; every result, in order, on every process.

        A progress bar on the main process counts its own share.
        """
        items = list(items)
        with self.state.split_between_processes(items) as mine:
            bar = tqdm(mine, desc=desc, leave=False, disable=not self.is_main or bool(os.environ.get("CI")))
            local = [fn(x) for x in bar]
        return local if self.count == 1 else gather_object(local)

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the main process only (a timing that must not share the machine); None elsewhere."""
        out = fn() if self.is_main else None
        self.state.wait_for_everyone()
        return out

    def wait(self) -> None:
        self.state.wait_for_everyone()
