"""The shapes world: a synthetic world of coloured shapes, its ruler, and a tiny SD-style model of it."""
from .measure import Found, find, fraction_in_box, measure
from .world import PALETTE, SHAPES, Obj, Scene, parse_caption, random_scene, render, scenes

__all__ = ["PALETTE", "SHAPES", "Obj", "Scene", "Found", "find", "fraction_in_box", "measure", "parse_caption",
           "random_scene", "render", "scenes"]
