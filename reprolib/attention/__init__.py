"""Cross-attention maps, read out with attention processors: layers, the processor, the recorder."""

from .layers import cross_attention_layers, default_layers, grid_shape, match_layers, select_layers
from .processor import ProbsProcessor, attach, detach
from .store import AttentionStore, EnoughRecorded, record_attention, run_until_recorded

# fmt: off
__all__ = ["AttentionStore", "EnoughRecorded", "ProbsProcessor", "attach", "cross_attention_layers", "default_layers",
           "detach", "grid_shape", "match_layers", "record_attention", "run_until_recorded", "select_layers"]
# fmt: on
