"""Optimization-based direction learning: Baumann et al.'s ``learn_delta.py``, exactly, and far cheaper.

:mod:`.objective` (one micro-step: sampling x_t, the predictions, the loss), :mod:`.pool` (the cached scheme),
:mod:`.counter` (UNet evaluations), :mod:`.loop` (optimizer steps, checkpoints, resume), :mod:`.rundir` (the
output folder), ``__main__`` (the command line).

    delta = learn_delta(pipe, "shapes/size", max_steps=300, out_dir="out/size")
    python -m reprolib.learn_delta --model sdxl --prompts people/age --device cuda:0 --gradient-checkpointing --out DIR
"""

from .counter import UNetCounter
from .loop import BETAS, SCHEMES, WEIGHT_DECAY, NonFiniteLoss, heldout_loss, learn_delta, micro_step
from .objective import SCALE_RANGE, TARGETS, Problem, to_prediction
from .pool import Trajectory, TrajectoryPool
from .rundir import RunConflict

# fmt: off
__all__ = ["BETAS", "SCALE_RANGE", "SCHEMES", "TARGETS", "WEIGHT_DECAY", "NonFiniteLoss", "Problem", "RunConflict",
           "Trajectory", "TrajectoryPool", "UNetCounter", "heldout_loss", "learn_delta", "micro_step", "to_prediction"]
# fmt: on
