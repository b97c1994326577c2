"""The package's shape, checked: imports one way and at the top, thin __init__ files, short functions,
no private names across modules, the shapes world kept out of the method code, docs that name every module."""

import ast
import json
import re
from pathlib import Path

import pytest

import reprolib

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "reprolib"

# The layers, bottom first: a module may import from its own unit or from units of a lower rank.
# CLIs (__main__.py) sit on top of everything. README.md's diagram draws the same table.
RANK = {
    "checks": 0,
    "quiet": 0,
    "device": 1,
    "files": 0,
    "widget_state": 0,
    "prompts": 1,
    "conditioning": 1,
    "originals": 1,
    "tokens": 2,
    "delta": 2,
    "protocols": 2,
    "shapes": 2,
    "tiny": 3,
    "edits": 3,
    "contrastive": 3,
    "attention": 4,
    "architectures": 4,
    "layout": 5,
    "blend": 5,
    "pipelines": 5,
    "generate": 6,
    "maps": 7,
    "widgets": 7,
    "inversion": 7,
    "learn_delta": 7,
    "plots": 8,
    "evaluation": 9,
    "box_widget": 9,
    "reproduce": 10,
}
CLI_RANK = 11
# the method code: it works on any diffusers pipeline and never looks at how one was loaded
METHOD_UNITS = {
    "conditioning",
    "tokens",
    "delta",
    "protocols",
    "edits",
    "contrastive",
    "attention",
    "layout",
    "blend",
    "generate",
    "maps",
    "widgets",
    "inversion",
    "box_widget",
    "plots",
    "learn_delta",
    "prompts",
    "device",
    "files",
    "checks",
}
# functions allowed past MAX_LINES, each with the reason
MAX_LINES = 60
LONG_OK = {
    "ProbsProcessor.__call__": "the attention computation written out in one piece, as diffusers' processors are",
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(module: str) -> int:
    if module.endswith(".__main__"):
        return CLI_RANK
    if module == "reprolib":
        return 99
    return RANK[unit(module)]


def internal_imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported reprolib module, line, at top level) for every import of a reprolib module."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = None, [a.name for a in node.names]
        else:
            continue
        for full in ([target] if target else []) + names:
            if full.split(".")[0] == "reprolib":
                found.append((full, node.lineno, id(node) in top))
    return found


def resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module a dotted import name refers to (``reprolib.attention.AttentionStore`` → ``reprolib.attention``)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        for name, _, _ in internal_imports(m, path):
            target = resolve(name, mods)
            # a module's own parent packages are imported anyway; they are not a dependency it chose
            if target and target != m and not m.startswith(target + "."):
                edges[m].add(target)
    return edges


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in modules()} - set(RANK) - {"__init__"})
    assert not missing, f"add these units to RANK (and to README's diagram): {missing}"


def test_imports_are_at_the_top_of_each_module():
    late = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for m, path in modules().items()
        for name, line, top in internal_imports(m, path)
        if not top
    ]
    assert not late, "imports inside functions hide the dependency graph:\n" + "\n".join(late)
    for path in PKG.rglob("*.py"):  # third-party imports too
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{path.relative_to(ROOT)}:{inner[0].lineno}: import inside {node.name}()"


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in edges[m]:
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n] if n in stack else [m, n]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [m])


def test_imports_run_one_way():
    wrong = []
    for m, targets in graph().items():
        for t in targets:
            if m == "reprolib" or unit(t) == unit(m) and not m.endswith("__main__"):
                continue
            if rank(t) >= rank(m) and not (m.endswith(".__main__") and t.startswith(m.rsplit(".", 1)[0])):
                wrong.append(f"{m} (rank {rank(m)}) imports {t} (rank {rank(t)})")
    assert not wrong, "imports must go down the layers:\n" + "\n".join(sorted(wrong))


def test_the_method_code_does_not_know_the_shapes_world_or_how_pipelines_are_loaded():
    bad = [
        f"{m} imports {t}"
        for m, ts in graph().items()
        for t in ts
        if unit(m) in METHOD_UNITS and not m.endswith("__main__") and unit(t) in {"shapes", "pipelines", "tiny"}
    ]
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The graph checks fail on a planted cycle (generate ↔ layout), so they cannot pass vacuously."""
    real = graph()
    assert real["reprolib.generate"] and "reprolib.layout" in real["reprolib.generate"]
    planted = {k: set(v) for k, v in real.items()}
    planted["reprolib.layout.guidance"].add("reprolib.generate")
    monkeypatch.setattr(__import__(__name__), "graph", lambda: planted)
    with pytest.raises(pytest.fail.Exception):
        test_no_import_cycle()
    with pytest.raises(AssertionError):
        test_imports_run_one_way()


def test_init_files_only_re_export():
    for path in PKG.rglob("__init__.py"):
        text = path.read_text()
        assert len(text.splitlines()) <= 30, f"{path.relative_to(ROOT)} has {len(text.splitlines())} lines"
        for node in ast.parse(text).body:
            ok = (
                isinstance(node, (ast.Import, ast.ImportFrom))
                or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                or (
                    isinstance(node, ast.Assign)
                    and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"]
                )
            )
            assert ok, f"{path.relative_to(ROOT)}:{node.lineno}: an __init__.py only re-exports"


def all_lists():
    for path in PKG.rglob("__init__.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                yield path, [e.value for e in node.value.elts]


def test_all_lists_are_unique_and_complete():
    for path, names in all_lists():
        dupes = sorted({n for n in names if names.count(n) > 1})
        assert not dupes, f"{path.relative_to(ROOT)}: __all__ repeats {dupes}"
    assert sorted(reprolib.__all__) == sorted(set(reprolib.__all__))
    for name in reprolib.__all__:
        assert hasattr(reprolib, name), name


def test_duplicate_check_catches_a_repeat():
    names = ["a", "b", "a"]
    assert sorted({n for n in names if names.count(n) > 1}) == ["a"]


def long_functions() -> list[tuple[str, int]]:
    """(place, logical lines): the statements of its body, docstring excluded, each counted once however
    many physical lines the formatter wraps it onto (a call with one argument a line is one line here)."""
    out = []
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for cls in [None, *[n for n in tree.body if isinstance(n, ast.ClassDef)]]:
            body = tree.body if cls is None else cls.body
            for f in body:
                if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{cls.name}.{f.name}" if cls else f.name
                    first = f.body[0]
                    doc = first if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else None
                    lines = {n.lineno for n in ast.walk(f) if isinstance(n, ast.stmt) and n is not f and n is not doc}
                    out.append((f"{path.relative_to(PKG)}:{name}", len(lines)))
    return out


def test_no_function_is_longer_than_a_screen_without_a_reason():
    long = [(n, k) for n, k in long_functions() if k > MAX_LINES and n.split(":")[1] not in LONG_OK]
    assert not long, f"functions over {MAX_LINES} lines (cut them, or add a reason to LONG_OK): {long}"


def test_no_private_names_cross_modules():
    pattern = re.compile(r"from (reprolib[\w.]*|\.+[\w.]*) import ([^\n(]+|\([^)]*\))")
    files = [*PKG.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    bad = []
    for path in files:
        for m in pattern.finditer(path.read_text()):
            names = [n.strip().split(" as ")[0] for n in m.group(2).strip("()").split(",")]
            bad += [f"{path.relative_to(ROOT)}: {n} from {m.group(1)}" for n in names if n.startswith("_")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_benchmarks_and_tools_do_not_edit_sys_path():
    for path in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tools").glob("*.py")]:
        assert "sys.path" not in path.read_text(), f"{path.name} edits sys.path; the package is installed"


def test_readme_names_every_module_and_no_missing_one():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The library") :]
    for m in modules():
        if m == "reprolib" or m.endswith("__main__"):
            continue
        short = m.removeprefix("reprolib.")
        assert f"`{short}`" in section or f"`{short.split('.')[-1]}`" in section, f"README does not name {short}"
    for name in re.findall(r"`reprolib\.([\w.]+)`", section):
        assert resolve(f"reprolib.{name}", modules()), f"README names reprolib.{name}, which does not exist"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_open_with_a_title_and_import_from_the_modules(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), "the first cell is a '# title'"
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert not re.search(r"^\s*(import reprolib\b|from reprolib import)", code, re.M), (
        "import each concept from the module named for it (from reprolib.generate import generate)"
    )
