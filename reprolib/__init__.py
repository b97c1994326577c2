"""reprolib: training-free control of text-to-image diffusion, taught on a CPU-sized shapes world.

    pipe = reprolib.load_pipeline("shapes")                  # or "sd15", "sd21", "sdxl", a hub id, a folder
    size = reprolib.contrastive_delta(pipe, "shapes/size")   # optimization-free attribute delta
    img = reprolib.generate(pipe, "a red circle and a blue square", seed=0,
                            edits=[(size, "circle", 1.5)],               # make only the circle bigger
                            boxes={"blue square": (0.0, 0.0, 0.5, 0.5)})  # and put the square top-left
"""
import os as _os

_os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keeps import-time notices out of notebooks

from .attention import attention_maps, plot_grid, plot_overlay, record_attention  # noqa: E402
from .conditioning import Embeddings, TextConditioning, Tokens  # noqa: E402
from .contrastive import contrastive_delta  # noqa: E402
from .delta import Delta, DeltaMismatch  # noqa: E402
from .device import pick_device, pick_dtype  # noqa: E402
from .generate import generate  # noqa: E402
from .layout import BoxError, LayoutConfig  # noqa: E402
from .learn_delta import NonFiniteLoss, RunConflict, heldout_loss, learn_delta  # noqa: E402
from .layout import BoxError, LayoutConfig  # noqa: E402
from .learn_delta import NonFiniteLoss, RunConflict, heldout_loss, learn_delta  # noqa: E402
from .pipelines import KNOWN_MODELS, ModelNotAvailable, describe, load_pipeline, try_load  # noqa: E402
from .prompts import ConfigError, Pair, PromptConfig, load_config  # noqa: E402
from .tokens import SpanError, token_span  # noqa: E402
from .widgets import attribute_slider  # noqa: E402

__all__ = ["BoxError", "LayoutConfig", "attention_maps", "plot_grid", "plot_overlay", "record_attention",
           "ConfigError", "Delta", "DeltaMismatch", "Embeddings", "KNOWN_MODELS", "ModelNotAvailable", "Pair",
           "PromptConfig", "SpanError", "TextConditioning", "Tokens", "attribute_slider", "contrastive_delta",
           "describe", "generate", "heldout_loss", "learn_delta", "NonFiniteLoss", "RunConflict", "heldout_loss", "learn_delta", "NonFiniteLoss", "RunConflict", "load_config", "load_pipeline", "pick_device", "pick_dtype", "token_span",
           "try_load"]
