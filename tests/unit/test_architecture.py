"""The package's layers (docs/design.md, "Architecture"), checked on every import.

Each module lives in the subpackage of its layer. A module may import from its own layer
and the layers below it, never above -- also inside functions, where the prolog's lazy
imports live. The simulator sits beside the node agent: it calls the production planner
and never mounts, copies or reads a node's state.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scratch_stage"
# Bottom to top. The entry points (`__main__`, `hookmain`, `cli`) are the package's top level.
LAYERS = ("core", "host", "slurm", "policy", "agent", "entry")
RANK = {name: i for i, name in enumerate(LAYERS)}
# The simulator: values and the planner, nothing that touches a node.
SIMULATE_MAY_IMPORT = {"core", "policy", "simulate"}
# Package data, no modules: the site files (agent/site_files.py).
DATA_DIR = "site"


def layer_of(module: str) -> str:
    """'scratch_stage.host.state' -> 'host'; top-level modules are entry points."""
    parts = module.split(".")
    assert parts[0] == "scratch_stage", module
    if len(parts) > 2 and parts[1] in (*LAYERS, "simulate"):
        return parts[1]
    return "entry"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def imported(path: Path) -> set[str]:
    """Every scratch_stage module PATH imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "scratch_stage":
                found.update(f"scratch_stage.{a.name}" for a in node.names)
            elif node.module.startswith("scratch_stage."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("scratch_stage."))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_is_in_a_layer() -> None:
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "hookmain.py", "cli.py"}
    dirs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert dirs == {*LAYERS[:-1], "simulate", DATA_DIR}


def test_the_data_directory_holds_no_code() -> None:
    # scratch_stage/site: the Slurm and systemd files a site installs (install-site-files)
    data = PACKAGE / DATA_DIR
    assert not [p for p in data.rglob("*") if p.suffix in (".py", ".pyc", ".so")]
    assert not (data / "__init__.py").exists()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    me = layer_of(module_name(path)) if path.parent != PACKAGE else "entry"
    for target in sorted(imported(path)):
        if target in ("scratch_stage", "scratch_stage.__init__") or target.count(".") < 2:
            continue  # the package itself (__version__)
        theirs = layer_of(target)
        if me == "simulate":
            assert theirs in SIMULATE_MAY_IMPORT, f"{module_name(path)} imports {target}"
        else:
            assert theirs != "simulate" or me == "entry", f"{module_name(path)} imports {target}"
            if theirs != "simulate":
                assert RANK[theirs] <= RANK[me], (
                    f"{module_name(path)} ({me}) imports {target} ({theirs}), a layer above"
                )


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from scratch_stage.agent.mounts import mount\n")
    assert imported(bad) == {"scratch_stage.agent.mounts"}
    assert RANK[layer_of("scratch_stage.agent.mounts")] > RANK["host"]
