"""Shared fixtures: tiny random pipelines (offline, < 1 s) and the real CLIP BPE tokenizer when it can be had."""

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from reprolib.tiny import clip_bpe_tokenizer, tiny_pipeline  # noqa: E402

# two cores: one thread per test process avoids oversubscription when anything else runs
torch.set_num_threads(1)


def _tiny(family):
    pipe = tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def sd15():
    return _tiny("sd15")


@pytest.fixture
def sd21():
    return _tiny("sd21")


@pytest.fixture
def sdxl():
    return _tiny("sdxl")


@pytest.fixture(params=["sd15", "sd21", "sdxl"])
def any_tiny(request):
    return _tiny(request.param)


@pytest.fixture(scope="session")
def bpe():
    """OpenAI CLIP's real BPE tokenizer (from the open_clip_torch wheel), or skip with the reason."""
    try:
        return clip_bpe_tokenizer()
    except RuntimeError as e:
        pytest.skip(f"real CLIP BPE vocabulary unavailable: {e}")


@pytest.fixture(scope="session")
def shapes_pipe():
    """The embedded shapes-world model, or skip if its weights are not built yet."""
    from reprolib.pipelines import SHAPES_DIR, load_pipeline

    if not (SHAPES_DIR / "model_index.json").exists():
        pytest.skip("shapes-world weights not exported yet (python -m reprolib.shapes.train ... --export)")
    return load_pipeline("shapes")


@pytest.fixture
def bench_script():
    """``load(name)``: benchmarks/``name``.py as a module (the scripts are not a package)."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
