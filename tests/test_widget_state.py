"""The pre-save hook that keeps a notebook's widget state when JupyterLab leaves it out (#18)."""

import copy
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from reprolib.widget_state import STATE, VIEW, keep_widget_state, missing_models, repair

ROOT = Path(__file__).resolve().parents[1]
A, B, LAYOUT, OTHER = "a" * 32, "b" * 32, "c" * 32, "d" * 32


def _model(name: str, **state) -> dict:
    return {"model_module": "@jupyter-widgets/controls", "model_name": name, "state": state}


def _notebook(state: dict | None, shown: str = A) -> dict:
    out = {"output_type": "display_data", "data": {VIEW: {"model_id": shown}, "image/png": "iVBO", "text/plain": "x"}}
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [out]}], "metadata": {}}
    if state is not None:
        nb["metadata"]["widgets"] = {STATE: {"version_major": 2, "version_minor": 0, "state": state}}
    return nb


SAVED = {
    A: _model("VBoxModel", children=[f"IPY_MODEL_{B}"], layout=f"IPY_MODEL_{LAYOUT}"),
    B: _model("ImageModel"),
    LAYOUT: _model("LayoutModel"),
    OTHER: _model("LabelModel"),  # not shown by any output: not carried over
}


def test_models_left_out_are_taken_from_the_file_being_replaced_with_their_children():
    nb = _notebook({})  # what JupyterLab writes when the widgets came from the file (not live)
    assert repair(nb, _notebook(SAVED)) == {"kept": 3, "dropped": 0}
    assert set(nb["metadata"]["widgets"][STATE]["state"]) == {A, B, LAYOUT}
    nb = _notebook(None)  # no widget metadata at all
    repair(nb, _notebook(SAVED))
    assert set(nb["metadata"]["widgets"][STATE]["state"]) == {A, B, LAYOUT}


def test_a_complete_state_is_left_alone():
    nb = _notebook(copy.deepcopy(SAVED))
    before = copy.deepcopy(nb)
    assert repair(nb, _notebook({})) == {"kept": 0, "dropped": 0}
    assert nb == before
    plain = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": "hi"}]}], "metadata": {}}
    assert repair(plain, None) == {"kept": 0, "dropped": 0} and "widgets" not in plain["metadata"]


def test_a_view_whose_model_is_nowhere_falls_back_to_its_picture():
    nb = _notebook({}, shown=OTHER + "0")
    nb["cells"][0]["outputs"].append({"output_type": "display_data", "data": {VIEW: {"model_id": "e" * 32}}})
    assert repair(nb, None) == {"kept": 0, "dropped": 1}
    first, second = (o["data"] for o in nb["cells"][0]["outputs"])
    assert VIEW not in first and first["image/png"] == "iVBO"
    assert VIEW in second  # nothing else to show: left as it is


def test_the_server_hook_reads_the_file_on_disk(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "ch.ipynb").write_text(json.dumps(_notebook(SAVED)))
    manager = SimpleNamespace(root_dir=str(tmp_path), log=logging.getLogger("test"))
    model = {"type": "notebook", "content": _notebook({})}
    keep_widget_state(model=model, path="/nb/ch.ipynb", contents_manager=manager)
    assert set(model["content"]["metadata"]["widgets"][STATE]["state"]) == {A, B, LAYOUT}
    new = {"type": "notebook", "content": _notebook({})}  # a new file: nothing to take from
    keep_widget_state(model=new, path="nb/new.ipynb", contents_manager=manager)
    assert new["content"]["cells"][0]["outputs"][0]["data"].keys() == {"image/png", "text/plain"}
    text = {"type": "file", "content": "x"}
    keep_widget_state(model=text, path="nb/a.txt", contents_manager=manager)
    assert text == {"type": "file", "content": "x"}


def test_lab_settings_installs_the_setting_and_the_hook(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import lab_settings
    finally:
        sys.path.pop(0)
    overrides, server = tmp_path / "overrides.json", tmp_path / "etc" / "jupyter_server_config.json"
    overrides.write_text(json.dumps({"other": {"x": 1}}))
    server.parent.mkdir()
    server.write_text(json.dumps({"ServerApp": {"port": 9}}))
    assert not lab_settings.installed(overrides, server)
    lab_settings.install(overrides, server)
    assert lab_settings.installed(overrides, server)
    assert json.loads(overrides.read_text())["other"] == {"x": 1}
    config = json.loads(server.read_text())
    assert config["ContentsManager"]["pre_save_hook"] == "reprolib.widget_state.keep_widget_state"
    assert config["ServerApp"] == {"port": 9}


def test_missing_models_follows_every_reference_in_the_state():
    assert missing_models(_notebook(copy.deepcopy(SAVED))) == set()
    assert missing_models(_notebook({})) == {A}
    no_layout = {k: v for k, v in SAVED.items() if k != LAYOUT}
    assert missing_models(_notebook(no_layout)) == {LAYOUT}
    dangling = {**SAVED, OTHER: _model("LabelModel", layout="IPY_MODEL_" + "f" * 32)}  # shown nowhere, still checked
    assert missing_models(_notebook(dangling)) == {"f" * 32}
    # through the replaced file: the shown model's children come with it
    assert missing_models(_notebook({}), _notebook(SAVED)) == {A, B, LAYOUT}
