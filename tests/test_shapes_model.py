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
    """A small fixed sample of the evaluation (the full 200-caption figures are in the model card)."""
    f = evaluate.faithfulness(shapes_pipe, n=32)
    assert f["colour"] >= 0.9 and f["shape"] >= 0.8 and f["count"] >= 0.8 and f["size"] >= 0.8, f


def test_generated_objects_are_measurable(shapes_pipe):
    from reprolib import generate

    img = generate(shapes_pipe, "a big yellow square", seed=0)
    found = measure.find(measure.measure(np.asarray(img)), colour="yellow")
    assert found is not None and found.shape == "square"
