"""Keep a notebook's widget state when JupyterLab saves it without the widgets (a Jupyter server pre-save hook).

JupyterLab 4 with ipywidgets 8 writes into the saved notebook only the widgets connected to a live kernel
(ipywidgets#3270). Open a chapter whose widgets came from its saved state, save it (or let autosave do it a
couple of minutes later) and the file's outputs point at widget models it no longer holds: every later open
shows "Error displaying widget: model not found". This hook runs on the server before each save:

* a widget model that an output shows but the new state lacks is taken from the file being replaced;
* an output whose model is nowhere keeps its other representations (the picture the chapters store with
  each widget) instead of a widget view that can only fail.

``python tools/lab_settings.py`` (run by ``make env``) installs it as the server's ``pre_save_hook``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"
REF = re.compile(r"IPY_MODEL_([0-9a-f]{32})")


def _state(nb: dict) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(STATE, {}).get("state", {})


def _views(nb: dict) -> list[dict]:
    """Every output that shows a widget, as its ``data`` dict."""
    return [
        o["data"]
        for cell in nb.get("cells", [])
        for o in cell.get("outputs", [])
        if isinstance(o.get("data"), dict) and VIEW in o["data"]
    ]


def _needed(roots: set[str], *states: dict) -> set[str]:
    """``roots`` and every model they reference (children, layouts, styles), looked up in ``states`` in turn."""
    seen, todo = set(), list(roots)
    while todo:
        mid = todo.pop()
        if mid in seen:
            continue
        seen.add(mid)
        model = next((s[mid] for s in states if mid in s), None)
        if model is not None:
            todo += REF.findall(json.dumps(model.get("state", {})))
    return seen


def missing_models(nb: dict, previous: dict | None = None) -> set[str]:
    """Widget models ``nb`` needs but its state lacks: those its outputs show and those its models reference,
    following references through ``previous``'s state too (a model taken from there brings its children)."""
    state = _state(nb)
    return _needed({v[VIEW]["model_id"] for v in _views(nb)} | set(state), state, _state(previous or {})) - set(state)


def repair(nb: dict, previous: dict | None) -> dict[str, int]:
    """Mend ``nb`` in place (see the module docstring); returns how many models were kept and views dropped."""
    views = _views(nb)
    if not views:
        return {"kept": 0, "dropped": 0}
    state, old = _state(nb), _state(previous or {})
    kept = {mid: old[mid] for mid in missing_models(nb, previous) if mid in old}
    if kept:
        meta = nb.setdefault("metadata", {}).setdefault("widgets", {})
        block = meta.setdefault(STATE, {"version_major": 2, "version_minor": 0, "state": {}})
        block.setdefault("state", {}).update(kept)
        state = block["state"]
    dropped = 0
    for data in views:
        if data[VIEW]["model_id"] not in state and len(data) > 1:
            del data[VIEW]
            dropped += 1
    return {"kept": len(kept), "dropped": dropped}


def keep_widget_state(model: dict, path: str, contents_manager, **kwargs) -> None:
    """Jupyter server ``pre_save_hook``: mend a notebook's widget state before it is written."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    file = Path(contents_manager.root_dir) / path.lstrip("/")
    previous = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
    done = repair(model["content"], previous)
    if done["kept"] or done["dropped"]:
        contents_manager.log.info(
            "%s: kept %d widget models JupyterLab left out; %d widget views without a model fall back to "
            "their picture (reprolib.widget_state)",
            path,
            done["kept"],
            done["dropped"],
        )
