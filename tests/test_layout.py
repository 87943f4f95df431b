"""The package's layout: every module imports on its own, the internal imports form no cycle, and modules and functions
stay small enough to read (a ``# size:`` comment inside says why where one may not), and lines short."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "streamfuse"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_LINE = 120  # characters, as pyproject.toml's ruff line-length
SIZE_MARK = "# size:"  # a comment line of its own, so a code comment reading "size: (H, W)" is not one


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: module level, inside try/if blocks, not under TYPE_CHECKING."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try)) and not _is_type_checking(node):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
    return found


def _edges(name: str, path: Path, *, lazy: bool = False) -> set[str]:
    """The package modules ``name`` imports at module level, or anywhere with ``lazy`` (inside functions too);
    ``from pkg import sub`` counts as ``pkg.sub``."""
    package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
    tree = ast.parse(path.read_text())
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] if lazy else \
        _top_level_imports(tree)
    edges = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        edges |= {t for t in targets if t in MODULES and t != name}
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of module names (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


# every module imported in turn takes minutes on a busy machine (over 300 s at a load average of 15 on two cores):
# the run's own 1500 s, there to end a hang, not the suite's 120 s
@pytest.mark.timeout(1560)
def test_each_module_imports_on_its_own():
    # One interpreter for speed (torch and friends load once), but the package is dropped from sys.modules before
    # each module, so a module that imports only because an earlier one pulled in what it needs fails here.
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'streamfuse' or m.startswith('streamfuse.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}'.splitlines()[0])\n"
        "print('\\n'.join(failed))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", "modules that do not import on their own:\n" + proc.stdout


def test_import_graph_has_no_cycle():
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > len(MODULES)  # the parser does see the package's imports
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# A circle closed by an import inside a function is hidden from the interpreter but not from a reader: the modules
# still cannot be understood one without the other.
def test_no_cycle_through_lazy_imports_either():
    graph = {name: _edges(name, path, lazy=True) for name, path in MODULES.items()}
    cycle = _cycle(graph)
    assert not cycle, "import cycle (through imports inside functions): " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def _size_reason(line: str) -> bool:
    return line.lstrip().startswith(SIZE_MARK)


def _oversized() -> list[str]:
    """Modules over MAX_MODULE_LINES and functions over MAX_FUNCTION_LINES with no ``# size:`` comment inside."""
    found = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and not any(_size_reason(line) for line in lines):
            found.append(f"{path.relative_to(REPO)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = lines[node.lineno - 1:node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(_size_reason(line) for line in body):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}(): {len(body)} lines")
    return found


def test_modules_and_functions_are_small():
    oversized = _oversized()
    assert not oversized, "over the size limits without a `# size:` reason:\n" + "\n".join(oversized)


def test_lines_are_at_most_120_characters():
    """The line length the project's style and its ruff setting give, in the package, its tools and tests."""
    files = sorted([*PACKAGE.rglob("*.py"), *(REPO / "tools").glob("*.py"), *(REPO / "tests").rglob("*.py"),
                    REPO / "run_stream.py"])
    long = [f"{path.relative_to(REPO)}:{n}: {len(line)} characters"
            for path in files for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > MAX_LINE]
    assert not long, "lines over 120 characters:\n" + "\n".join(long)


def test_the_readme_layout_names_every_module():
    # a reader looking for the code of a stage in the README's layout found no word of capture/time_line.py,
    # replay/order_lag.py, replay/publishing.py, private_folder.py, sticky.py or torch_cache.py
    text = (REPO / "README.md").read_text()
    layout = text[text.index("\n## Layout"):text.index("\n## Data")]
    unnamed = [str(path.relative_to(REPO)) for path in sorted((REPO / "streamfuse").rglob("*.py"))
               if path.stem not in ("__init__", "__main__")
               and path.name not in layout and not re.search(rf"\b{re.escape(path.stem)}\b", layout)]
    assert unnamed == []


def test_the_readme_layout_names_each_module_in_its_own_folder():
    # the layout named stage_samples.py among replay/'s modules, where a reader looked for replay/stage_samples.py in
    # vain: it is streamfuse/stage_samples.py
    text = (REPO / "README.md").read_text()
    layout = text[text.index("\n## Layout"):text.index("\n## Data")]
    misplaced, folder = [], None
    for line in layout.splitlines():
        if opened := re.match(r"  (\w+)/\s", line):
            folder = opened.group(1)
        elif not line.startswith(" " * 3):  # a top-level entry, or the block's end
            folder = None
        misplaced += [f"{folder}/{name}" for name in re.findall(r"\b\w+\.py\b", line)
                      if folder and not (PACKAGE / folder / name).exists()]
    assert misplaced == []
