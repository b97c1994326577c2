"""The slider's α range from what the ruler measures: monotonic size and one intact object (#18)."""

import numpy as np
import pytest
from PIL import Image

from reprolib.evaluation.deltas import Sweep, intact, usable_range
from reprolib.shapes import world


def test_usable_range_stops_where_size_or_the_object_breaks():
    alphas = [-2, -1.5, -1, -0.5, 0, 1, 2, 3]
    area = [90, 100, 118, 158, 238, 486, 631, 600]  # falls again past α = 2
    ok = [0.75, 1, 1, 1, 1, 1, 1, 1]  # at α = -2 a quarter of the seeds show two blobs
    assert usable_range(alphas, area, ok) == (-1.5, 2.0)
    assert usable_range(alphas, area, ok, need=0.7) == (-2.0, 2.0)
    assert usable_range(alphas[::-1], area[::-1], ok[::-1]) == (-1.5, 2.0)  # any order
    with pytest.raises(ValueError, match="α = 0"):
        usable_range(alphas, area, [1, 1, 1, 1, 0.5, 1, 1, 1])


def test_intact_counts_one_object_of_the_right_shape():
    one = world.render((world.Obj("circle", "red", 6, 16, 16), world.Obj("square", "blue", 5, 48, 48)))
    two = world.render((world.Obj("circle", "red", 3, 12, 12), world.Obj("circle", "red", 3, 40, 40)))
    wrong = world.render((world.Obj("square", "red", 6, 16, 16),))
    images = [[Image.fromarray(one), Image.fromarray(one)], [Image.fromarray(one), Image.fromarray(two)]]
    images.append([Image.fromarray(wrong), Image.fromarray(one)])
    sweep = Sweep([0.0, 1.0, 2.0], [0, 1], np.zeros((3, 2)), None, images)
    np.testing.assert_array_equal(intact(sweep, ("red", "circle")), [1.0, 0.5, 0.5])
