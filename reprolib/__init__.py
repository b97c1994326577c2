"""reprolib: training-free control of text-to-image diffusion; ``load_pipeline("shapes")``, then ``generate``."""

from .quiet import quiet  # isort: skip  (first: sets chatter defaults before diffusers is imported)
from .attention import record_attention
from .conditioning import Embeddings, TextConditioning, Tokens
from .contrastive import contrastive_delta
from .delta import Delta, DeltaMismatch
from .device import pick_device, pick_dtype
from .edits import Edit
from .generate import generate
from .inversion import Inversion, InversionError, invert
from .layout import BoxError, LayoutConfig, LayoutGuidance
from .learn_delta import NonFiniteLoss, RunConflict, heldout_loss, learn_delta
from .maps import AttentionMaps, attention_maps
from .pipelines import KNOWN_MODELS, ModelNotAvailable, describe, load_pipeline, try_load
from .plots import plot_grid, plot_overlay
from .prompts import ConfigError, Pair, PromptConfig, load_config
from .tokens import SpanError, token_span
from .widgets import attribute_slider

# fmt: off
__all__ = ["AttentionMaps", "BoxError", "ConfigError", "Delta", "DeltaMismatch", "Edit", "Embeddings", "Inversion",
           "InversionError", "KNOWN_MODELS", "LayoutConfig", "LayoutGuidance", "ModelNotAvailable", "NonFiniteLoss",
           "Pair", "PromptConfig", "RunConflict", "SpanError", "TextConditioning", "Tokens", "attention_maps",
           "attribute_slider", "contrastive_delta", "describe", "generate", "heldout_loss", "invert", "learn_delta",
           "load_config", "load_pipeline", "pick_device", "pick_dtype", "plot_grid", "plot_overlay", "quiet",
           "record_attention", "token_span", "try_load"]
# fmt: on
