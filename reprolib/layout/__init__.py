"""Layout control by cross-attention guidance (Chen, Laina & Vedaldi, WACV 2024).

    img = generate(pipe, "a red circle and a blue square", seed=445,
                   boxes={"red circle": (0.0, 0.0, 0.5, 0.5)}, layout=LayoutConfig(eta=30))

``boxes`` (checked boxes, their cells), ``energy`` (the energy and the step size), ``guidance`` (the
hook). CLI: ``python -m reprolib.layout --model shapes --prompt "..." --box "red circle=0,0,.5,.5" --out DIR``.
"""

from .boxes import Box, BoxError, Target, box_mask, normalise_boxes, parse_box, targets_for
from .energy import is_variance_exploding, layout_energy, step_scale
from .guidance import ForwardBias, LayoutConfig, LayoutGuidance

# fmt: off
__all__ = ["Box", "BoxError", "ForwardBias", "LayoutConfig", "LayoutGuidance", "Target", "box_mask",
           "is_variance_exploding", "layout_energy", "normalise_boxes", "parse_box", "step_scale", "targets_for"]
# fmt: on
