"""The prolog's import budget, statically: what the hot modules import at module level.

Every job start imports these modules (the fast path of `__main__`, then `hookmain`'s
lazy imports). A module-level import added to any of them is paid by every job, so this
walks their static closure -- imports at module level, not inside functions and not
under `if TYPE_CHECKING:` -- and fails when it reaches a module outside the budget. The
privileged tier (tests/privileged/test_prolog_imports.py) checks a real prolog's modules.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "scratch_stage"

# Where a prolog or epilog starts: the entry point and what hookmain imports in functions.
# (agent.recovery is not one: it is imported only when the state file has to be rebuilt.)
ROOTS = (
    "scratch_stage.__main__",
    "scratch_stage.hookmain",
    "scratch_stage.agent.hooks",
    "scratch_stage.agent.node",
    "scratch_stage.agent.mounts",
    "scratch_stage.agent.reconcile",
    "scratch_stage.host.config",
    "scratch_stage.host.configcache",
    "scratch_stage.host.locks",
    "scratch_stage.host.logger",
)
# Our modules a prolog may load at import time (adding one here is a decision, not a fix).
HOT_MODULES = {
    *ROOTS,
    "scratch_stage",
    "scratch_stage.core",
    "scratch_stage.core.errors",
    "scratch_stage.core.layout",
    "scratch_stage.core.records",
    "scratch_stage.core.requests",
    "scratch_stage.core.text",
    "scratch_stage.core.units",
    "scratch_stage.host",
    "scratch_stage.host.catalog",
    "scratch_stage.host.counters",
    "scratch_stage.host.events",
    "scratch_stage.host.faults",
    "scratch_stage.host.heat",
    "scratch_stage.host.mountinfo",
    "scratch_stage.host.state",
    "scratch_stage.agent",
}
# The standard library modules they may import at module level: C modules or small ones
# that `python -c pass` mostly loads anyway. `json` is C-accelerated.
ALLOWED_STDLIB = {
    "__future__", "errno", "fcntl", "grp", "json", "math", "os", "pwd", "stat",
    "struct", "sys", "time", "zlib",
    # still there, for now: each costs the prolog a few milliseconds
    "contextlib", "functools",
}  # fmt: skip
# What must never come back (each was measured at 2 to 18 ms of every job start).
FORBIDDEN = {
    "logging", "dataclasses", "typing", "re", "inspect", "yaml", "click", "subprocess",
    "shlex", "filelock", "collections", "enum", "traceback", "tempfile", "shutil", "socket",
    "signal", "pathlib",
}  # fmt: skip


def module_path(module: str) -> Path:
    parts = module.split(".")[1:]
    candidate = PACKAGE.joinpath(*parts)
    if candidate.is_dir():
        return candidate / "__init__.py"
    return candidate.with_suffix(".py")


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def module_level_imports(tree: ast.Module, module: str) -> set[str]:
    """Modules imported when MODULE's body runs (functions and TYPE_CHECKING skipped)."""
    found: set[str] = set()
    package = module if module_path(module).name == "__init__.py" else module.rpartition(".")[0]

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found.add(base)
                for alias in node.names:  # `from scratch_stage.host import faults`
                    candidate = f"{base}.{alias.name}"
                    if candidate.startswith("scratch_stage.") and module_path(candidate).exists():
                        found.add(candidate)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                visit(node.body)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
            # def and class bodies run later or hold no imports of the hot path

    visit(tree.body)
    return found


def closure() -> tuple[set[str], dict[str, set[str]]]:
    """Our modules reached from ROOTS, and each outside module with who imports it."""
    ours: set[str] = set()
    outside: dict[str, set[str]] = {}
    todo = list(ROOTS)
    while todo:
        module = todo.pop()
        if module in ours:
            continue
        ours.add(module)
        parent = module.rpartition(".")[0]
        if parent.startswith("scratch_stage") and parent not in ours:
            todo.append(parent)  # importing a.b.c runs a/__init__ and a/b/__init__ first
        tree = ast.parse(module_path(module).read_text())
        for name in module_level_imports(tree, module):
            if name == "scratch_stage" or name.startswith("scratch_stage."):
                todo.append(name)
            else:
                outside.setdefault(name, set()).add(module)
    return ours, outside


def test_roots_exist() -> None:
    for module in ROOTS:
        assert module_path(module).exists(), module


def test_hot_modules_import_only_hot_modules() -> None:
    ours, _ = closure()
    assert ours <= HOT_MODULES, f"new module on the prolog's path: {sorted(ours - HOT_MODULES)}"


def test_hot_modules_import_only_the_budgeted_stdlib() -> None:
    _, outside = closure()
    unexpected = {name: sorted(who) for name, who in outside.items() if name not in ALLOWED_STDLIB}
    assert not unexpected, f"module-level imports outside the prolog's budget: {unexpected}"
    assert not FORBIDDEN & set(outside)
    assert all(name.split(".")[0] in sys.stdlib_module_names for name in outside)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import logging\n", {"logging"}),
        ("from typing import Any\n", {"typing"}),
        ("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    import typing\n", set()),
        ("def f():\n    import yaml\n", set()),
        ("try:\n    import re\nexcept ImportError:\n    pass\n", {"re"}),
        ("if True:\n    import shlex\nelse:\n    import enum\n", {"shlex", "enum"}),
    ],
)
def test_the_walker_sees_module_level_imports_only(source: str, expected: set[str]) -> None:
    tree = ast.parse(source)
    assert module_level_imports(tree, "scratch_stage.host.fake") == expected


def test_a_new_top_level_import_in_a_hot_module_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    real = module_level_imports

    def with_logging(tree: ast.Module, module: str) -> set[str]:
        found = real(tree, module)
        return found | {"logging"} if module == "scratch_stage.host.state" else found

    monkeypatch.setattr(sys.modules[__name__], "module_level_imports", with_logging)
    with pytest.raises(AssertionError, match="logging"):
        test_hot_modules_import_only_the_budgeted_stdlib()
