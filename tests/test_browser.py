"""The chapters' widgets in JupyterLab, in a real (headless) Chromium, as a reader meets them (#16, #18).

For each chapter: open it before running (no "Error displaying widget"; each widget shows a static
picture), run all cells, use the widget with the keyboard and the mouse (the image must change; no widget
or kernel error), save, reopen (no "model not found"). JupyterLab runs from this environment on 127.0.0.1
with a token, on a temporary copy of the notebooks. Screenshots go to $REPROLIB_BROWSER_SHOTS or pytest's
temporary folder, whose path is printed with the measured latencies (release → new image).

Skips only when no Chromium (and its chromedriver) is installed: `.ci/run` installs Debian's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from reprolib.widget_state import missing_models

ROOT = Path(__file__).resolve().parents[1]
ERRORS = ("Error displaying widget", "model not found", "Traceback (most recent call last)")
# anywidget 0.11 (jupyter-bbox-widget's base) rejects a model that takes over 2 s to load its ES module
# (a fixed AbortSignal.timeout(2000) in its runtime): on a loaded 2-core machine it happens now and then
ANYWIDGET_TIMEOUT = "[anywidget] Failed to initialize model."


@dataclass(frozen=True)
class Chapter:
    notebook: str
    marker: str  # text of the code cell that shows the widget
    kind: str  # "slider" or "boxes"


CHAPTERS = [
    Chapter("02_clip_token_deltas.ipynb", "attribute_slider(", "slider"),
    Chapter("04_layout_guidance.ipynb", "box_drawer(", "boxes"),
    Chapter("05_real_images.ipynb", "attribute_slider(", "slider"),
]


def _browser() -> tuple[str, str] | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        browser = shutil.which(name)
        driver = shutil.which("chromedriver") or (
            "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
        )
        if browser and driver:
            return browser, driver
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on a copy of the notebooks: (base url, token, copy's root, screenshot folder)."""
    found = _browser()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is in pyproject.toml: pip install -e .")
    spec = importlib.util.spec_from_file_location("lab_settings", ROOT / "tools" / "lab_settings.py")
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)
    assert settings.installed(), "saveState or the pre-save hook is not set: python tools/lab_settings.py (make env)"
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    (root / "figures").mkdir()
    # every cell in the page (not only those in view), so that errors anywhere are seen
    tracker = root / ".settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none"}')
    news = root / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "get notified about news?" pop-up over the widgets
    shots = Path(os.environ.get("REPROLIB_BROWSER_SHOTS") or tmp_path_factory.mktemp("browser_shots"))
    shots.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # the kernel: one thread leaves a core to the browser on a 2-core machine
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
        "JUPYTER_DATA_DIR": str(root / ".data"),  # its own notary: the copy starts untrusted, as a fresh clone
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    env.pop("CI", None)  # what a reader gets: progress bars are not switched off by CI
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={root / '.settings'}",
        f"--LabApp.workspaces_dir={root / '.workspaces'}",
        "--LabApp.expose_app_in_browser=True",
        "--LabServerApp.news_url=",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = open(root / "jupyter.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"JupyterLab exited: {(root / 'jupyter.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("JupyterLab did not answer within 60 s")
        print(f"\nbrowser screenshots: {shots}")
        yield {"base": base, "token": token, "root": root, "shots": shots, "browser": found}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def driver(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = lab["browser"][0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
        # chapters run in tabs side by side: no tab may be slowed down for being in the background
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(lab["browser"][1]))
    d.set_script_timeout(300)  # saving or stopping a kernel waits behind three running chapters on 2 cores
    yield d
    d.quit()


# --- the page, through JupyterLab's own app object (expose_app_in_browser) -------------------------
# the tab's notebook panel, found by its path when opened (a background tab has no "current" widget)
PANEL = "const p = window.__panel;"
FIND = """const a = window.jupyterapp; window.__panel = a && Array.from(a.shell.widgets('main')).find(
  w => w.context && w.context.path.endsWith(arguments[0]) && w.content && w.sessionContext) || null;"""


def _open(d, lab, name: str, timeout: float = 120) -> None:
    # a workspace of its own per chapter (reset): a tab shows only its notebook
    d.get(f"{lab['base']}/lab/workspaces/ch{name[:2]}/tree/notebooks/{name}?reset&token={lab['token']}")
    _until(
        d,
        lambda: d.execute_script(
            f"""{FIND} {PANEL} return !!(p && p.context.isReady && p.content.widgets.length &&
            p.sessionContext.session && p.sessionContext.session.kernel &&
            p.sessionContext.session.kernel.status === 'idle')""",
            name,
        ),
        timeout,
        "the notebook and its kernel to be ready",
    )
    # widget outputs render after the notebook: wait until none says "Loading widget..."
    _until(d, lambda: "Loading widget..." not in d.find_element("css selector", ".jp-Notebook").text, 60, "widgets")


def _until(d, check, timeout: float, what: str, poll: float = 0.05):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        value = check()
        if value:
            return value
        time.sleep(poll)
    d.save_screenshot(str(Path(os.environ.get("REPROLIB_BROWSER_SHOTS") or "/tmp") / "timed_out.png"))
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _cell(d, marker: str):
    """The DOM node of the first code cell whose source contains ``marker``."""
    node = d.execute_script(
        f"{PANEL} const c = p.content.widgets.find(c => c.model.type === 'code' && "
        "c.model.sharedModel.getSource().includes(arguments[0])); return c ? c.node : null;",
        marker,
    )
    assert node is not None, f"no code cell with {marker!r} in the notebook"
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", node)
    return node


def _problems(d) -> list[str]:
    """Widget errors on the page, error outputs in the notebook, a dead kernel, widget errors in the console."""
    found = [e for e in ERRORS if e in d.find_element("css selector", ".jp-Notebook").text]
    found += d.execute_script(
        f"""{PANEL} const out = [];
        for (const c of p.content.widgets) if (c.model.type === 'code')
          for (let i = 0; i < c.model.outputs.length; i++) {{ const o = c.model.outputs.get(i).toJSON();
            if (o.output_type === 'error') out.push('error output: ' + o.ename + ': ' + o.evalue); }}
        const k = p.sessionContext.session && p.sessionContext.session.kernel;
        if (k && k.status === 'dead') out.push('the kernel died');
        return out;"""
    )
    for entry in d.get_log("browser"):
        if entry["level"] == "SEVERE" and any(w in entry["message"].lower() for w in ("widget", "model", "comm")):
            found.append("console: " + entry["message"][:300])
    return found


def _watch(d, cell) -> None:
    """Record every new picture of the cell's ``.widget-image`` in window.__frames (ipywidgets' Image swaps its
    blob URL). The whole cell is observed, so a widget view drawn anew (a new img) is still followed."""
    d.execute_script(
        """window.__frames = [];
        new MutationObserver(ms => ms.forEach(m => m.target.classList.contains('widget-image') &&
          window.__frames.push(m.target.src))).observe(arguments[0], {attributes: true, subtree: true,
          attributeFilter: ['src']});""",
        cell,
    )


def _frames(d) -> int:
    return d.execute_script("return (window.__frames || []).length")


def _latency(d, act, timeout: float = 120) -> float:
    """Seconds from the end of ``act()`` (a key press, a mouse release) to the next new picture."""
    n = _frames(d)
    act()
    t = time.perf_counter()
    _until(d, lambda: _frames(d) > n, timeout, "a new image after the widget moved", poll=0.02)
    return time.perf_counter() - t


def _shot(d, lab, name: str) -> None:
    path = lab["shots"] / f"{name}.png"
    d.save_screenshot(str(path))


def _unsaved_models(lab, chapter: Chapter) -> list[str]:
    """Widget models the saved notebook's outputs show (or its models reference) but its widget state lacks."""
    return sorted(missing_models(json.loads((lab["root"] / "notebooks" / chapter.notebook).read_text())))


def _static_picture(d, marker: str) -> None:
    """Before running: the widget's cell shows a picture (the widget from stored state, or its PNG)."""
    cell = _cell(d, marker)
    imgs = [
        i for i in cell.find_elements("css selector", ".jp-OutputArea-output img") if i.get_property("naturalWidth")
    ]
    assert imgs, f"the cell with {marker!r} shows no picture before running: {cell.text[:300]!r}"
    assert "VBox(children" not in cell.text and "HBox(children" not in cell.text, "a widget shown as its repr"


def _move_slider(d, lab, chapter: Chapter) -> dict[str, float]:
    """Keyboard, three quick presses, a pause (neighbours rendered ahead) and a drag; latencies in seconds."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    cell = _cell(d, chapter.marker)
    handle = cell.find_element("css selector", ".widget-slider .noUi-handle")
    readout = cell.find_element("css selector", ".widget-readout")
    _watch(d, cell)
    handle.click()  # focus
    first = readout.text
    times = {"key press": _latency(d, lambda: handle.send_keys(Keys.ARROW_RIGHT))}
    assert readout.text != first, "the arrow key did not move the slider"
    _shot(d, lab, f"{chapter.notebook[:2]}_2_key")
    time.sleep(8)  # the reader looks; the kernel renders the neighbouring values meanwhile
    times["key press after a pause"] = _latency(d, lambda: handle.send_keys(Keys.ARROW_RIGHT))
    n, before = _frames(d), readout.text
    times["three quick presses → last"] = _latency(d, lambda: handle.send_keys(*[Keys.ARROW_LEFT] * 3))
    _until(
        d, lambda: d.execute_script(f"{PANEL} return p.sessionContext.session.kernel.status === 'idle'"), 120, "idle"
    )
    time.sleep(1)
    times["frames shown for three presses"] = _frames(d) - n
    assert readout.text != before
    assert _frames(d) - n <= 2, "three quick presses showed every value instead of the last first"
    before = readout.text
    drag = ActionChains(d).click_and_hold(handle).move_by_offset(-40, 0).release()
    times["drag release"] = _latency(d, drag.perform)
    assert readout.text != before, "dragging did not move the slider"
    _shot(d, lab, f"{chapter.notebook[:2]}_3_dragged")
    return times


def _settled(d, img, what: str) -> None:
    """Wait until ``img`` has loaded and stopped moving on the page (outputs still landing shift it)."""
    _until(d, lambda: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img), 60, what)
    where = lambda: (img.rect["x"], img.rect["y"], img.rect["width"], img.rect["height"])
    before, still = where(), 0
    while still < 10:  # 10 × 0.1 s in the same place
        time.sleep(0.1)
        now = where()
        still, before = (still + 1 if now == before else 0), now


def _box_state(d, cell) -> str:
    """What the page says after a drag: boxes on the canvas, the drawer's status line, the kernel, problems."""
    rects = len(cell.find_elements("css selector", "svg rect"))
    labels = [e.text for e in cell.find_elements("css selector", ".widget-label") if e.text]
    kernel = d.execute_script(f"{PANEL} return p.sessionContext.session.kernel.status")
    attached = d.execute_script("return arguments[0].isConnected", cell)
    return f"{rects} boxes on the canvas, labels {labels}, kernel {kernel}, cell on the page {attached}, " + (
        f"problems {_problems(d)}"
    )


def _draw_boxes(d, lab, chapter: Chapter) -> dict[str, float]:
    """Draw one rectangle per phrase with the mouse on the canvas; the guided image must change each time."""
    from selenium.webdriver.common.action_chains import ActionChains

    cell = _cell(d, chapter.marker)
    canvas = next(
        i
        for i in cell.find_elements("css selector", ".jp-OutputArea-output img")
        if "widget-image" not in (i.get_attribute("class") or "")
    )
    _watch(d, cell)
    _settled(d, canvas, "the canvas picture to load and stay in place")
    w, h = canvas.size["width"], canvas.size["height"]
    times = {}
    # from the centre of the canvas: the bottom-right quarter for the first phrase, the top-left for the second
    for name, (x, y, dx, dy) in {"first box": (0.55, 0.55, 0.4, 0.4), "second box": (0.05, 0.05, 0.4, 0.4)}.items():
        drag = (
            ActionChains(d)
            .move_to_element_with_offset(canvas, int((x - 0.5) * w), int((y - 0.5) * h))
            .click_and_hold()
            .move_by_offset(int(dx * w / 2), int(dy * h / 2))
            .move_by_offset(int(dx * w / 2), int(dy * h / 2))
            .release()
        )
        rects = len(cell.find_elements("css selector", "svg rect"))
        try:
            times[f"{name}: release → guided image"] = _latency(d, drag.perform)
        except AssertionError as e:  # say whether the drag drew no box or the kernel never answered it
            raise AssertionError(f"{name}: {e}; before the drag {rects} boxes, now {_box_state(d, cell)}") from None
    assert len(cell.find_elements("css selector", "svg rect")) >= 2, "the two drawn boxes are not on the canvas"
    _shot(d, lab, f"{chapter.notebook[:2]}_3_boxes")
    return times


@pytest.fixture(scope="module")
def started(lab, driver):
    """Every chapter opened in its own tab (checked before running), then all run at once, one kernel each."""
    d, out = driver, {}
    for ch in CHAPTERS:
        if not (lab["root"] / "notebooks" / ch.notebook).exists() or ch.notebook in out:
            continue
        if out:
            d.switch_to.new_window("tab")
        _open(d, lab, ch.notebook)
        _cell(d, ch.marker)
        _shot(d, lab, f"{ch.notebook[:2]}_0_before_running")
        try:
            _static_picture(d, ch.marker)
            static = None
        except AssertionError as e:
            static = str(e)
        out[ch.notebook] = {"tab": d.current_window_handle, "before": _problems(d), "static": static}
        d.execute_script(
            f"{PANEL} window.jupyterapp.shell.activateById(p.id);"
            "window.__ran = null; window.__t0 = performance.now(); window.jupyterapp.commands"
            ".execute('notebook:run-all-cells').then(r => window.__ran = String(r), e => window.__ran = 'failed: ' + e)"
            ".finally(() => window.__seconds = (performance.now() - window.__t0) / 1000);"
        )
    return out


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.notebook[:2] for c in CHAPTERS])
def test_widgets_in_jupyterlab(lab, driver, started, chapter):
    if chapter.notebook not in started:
        pytest.skip(f"{chapter.notebook} is not written yet")
    d, state = driver, started[chapter.notebook]
    d.switch_to.window(state["tab"])
    assert state["before"] == [], f"opened before running: {state['before']}"
    assert state["static"] is None, state["static"]
    ran = _until(d, lambda: d.execute_script("return window.__ran"), 900, "all cells to run", poll=1)
    assert ran == "true", f"running all cells failed: {ran}; {_problems(d)}"
    print(f"\n{chapter.notebook}: all cells ran in {d.execute_script('return window.__seconds'):.0f} s")
    _shot(d, lab, f"{chapter.notebook[:2]}_1_ran")
    assert _problems(d) == []
    times = (_move_slider if chapter.kind == "slider" else _draw_boxes)(d, lab, chapter)
    for what, value in times.items():
        print(f"  {what}: {value:.2f} s" if isinstance(value, float) else f"  {what}: {value}")
    assert _problems(d) == [], "after using the widget"
    d.execute_async_script(f"const done = arguments[arguments.length - 1]; {PANEL} p.context.save().then(done, done);")
    _open(d, lab, chapter.notebook)  # reopened: the kernel still runs, the widgets come back from it
    _shot(d, lab, f"{chapter.notebook[:2]}_4_reopened")
    assert _problems(d) == [], "after save and reopen"
    _cell(d, chapter.marker).find_element("css selector", ".jupyter-widgets img")
    # reopened after its kernel stopped: the widgets come from the state saved in the notebook
    d.execute_async_script(
        f"const done = arguments[arguments.length - 1]; {PANEL} p.sessionContext.shutdown().then(done, done);"
    )
    assert _unsaved_models(lab, chapter) == [], "outputs point at widget models the saved file does not hold"
    raced = _open_until_shown(d, lab, chapter)
    _shot(d, lab, f"{chapter.notebook[:2]}_5_reopened_new_kernel")
    # saved again with its widgets from the file (JupyterLab writes none of them, ipywidgets#3270): the
    # server's pre-save hook (reprolib.widget_state) keeps them, so the next open still shows them
    d.execute_async_script(f"const done = arguments[arguments.length - 1]; {PANEL} p.context.save().then(done, done);")
    assert _unsaved_models(lab, chapter) == [], "saving without the kernel dropped widget models"
    raced += _open_until_shown(d, lab, chapter)
    if raced:
        pytest.xfail(f"upstream race when widgets come from the file (jupyterlab#15361, anywidget's 2 s): {raced[0]}")


def _open_until_shown(d, lab, chapter: Chapter, tries: int = 6) -> list[str]:
    """Open a notebook whose widgets come from its saved state; on "model not found", open it again.

    JupyterLab 4 + ipywidgets 8 race (jupyterlab/jupyterlab#15361): the widget manager can declare itself
    restored from the kernel before it has read the notebook's saved state, and a widget drawn meanwhile
    shows "model not found" for good. Measured: 1 open in 6 up to 3 in a row under load. Under load anywidget's
    2-second limit on loading a model's module can fire too (ANYWIDGET_TIMEOUT; seen once in CI). The
    file holds every model (checked by the caller), so a later open must show them all. Returns the problems of
    the raced opens.
    """
    raced = []
    for _ in range(tries):
        _open(d, lab, chapter.notebook)
        problems = _problems(d)
        if not problems:
            _static_picture(d, chapter.marker)
            return raced
        assert all(_upstream_race(p) for p in problems), problems
        raced.append(problems[0])
    raise AssertionError(f"{tries} opens in a row show a widget error: {raced}")


def _upstream_race(problem: str) -> bool:
    """A widget error that an open can show by upstream timing alone (see ``_open_until_shown``)."""
    return "model not found" in problem or problem == "Error displaying widget" or ANYWIDGET_TIMEOUT in problem
