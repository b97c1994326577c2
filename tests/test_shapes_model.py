"""The shipped shapes-world model: it loads fast, obeys captions, and its deltas act continuously."""
import time

import numpy as np
import pytest

from reprolib.pipelines import load_pipeline
from reprolib.shapes import evaluate, measure


def test_loads_fast(shapes_pipe):
    t = time.perf_counter()
    load_pipeline("shapes")
    assert time.perf_counter() - t < 10  # ~1 s when the machine is idle; generous for a busy CI box


def test_faithfulness_on_a_fixed_sample(shapes_pipe):
    """A small fixed sample of the evaluation (the full 200-caption figures are in the model card).

    Colour, shape and size words are held near their bars (0.95 / 0.90 / 0.90 on 200 captions); object
    count is not at its 0.90 bar yet (0.77 on 200 captions at 5,000 steps): this guards against regression.
    """
    f = evaluate.faithfulness(shapes_pipe, n=32)
    assert f["colour"] >= 0.9 and f["shape"] >= 0.85 and f["size"] >= 0.85, f
    assert f["count"] >= 0.65, f


def test_generated_objects_are_measurable(shapes_pipe):
    from reprolib import generate

    img = generate(shapes_pipe, "a big yellow square", seed=0)
    found = measure.find(measure.measure(np.asarray(img)), colour="yellow")
    assert found is not None and found.shape == "square"


def test_presence_counts_what_the_ruler_finds(shapes_pipe):
    from reprolib.shapes import probes

    assert probes.presence(shapes_pipe, "a big red circle", [], ("red", "circle"), seeds=range(4)) == 1.0
    assert probes.presence(shapes_pipe, "a big red circle", [], ("blue", "square"), seeds=range(4)) == 0.0


def test_shipped_learned_delta_fits_the_shipped_model(shapes_pipe):
    """The learned size delta in the package was made with these very weights (fingerprint checked)."""
    from pathlib import Path

    from reprolib import Delta, TextConditioning

    d = Delta.load(Path(__file__).resolve().parents[1] / "reprolib/shapes/deltas/size_learned.safetensors")
    assert d.meta["method"] == "learned" and "fingerprint" in d.meta
    d.check(TextConditioning(shapes_pipe))
