"""The layout docs/ARCHITECTURE.md draws, enforced: imports run one way, public APIs are curated.

Read from the source with ``ast`` (nothing is imported), so a violation is reported with the
file and line that introduce it.
"""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernel", "backends", "worktrees", "ws_gateway", "orchestrator")
# Within orchestrator, a layer may import its own and the layers below it.
LAYERS = ("errors", "db", "dispatch", "services", "app")
# What each top-level package may import of the others (orchestrator: all, layer by layer).
MAY_IMPORT = {
    "kernel": set(),
    "backends": {"kernel"},
    "worktrees": {"kernel"},
    "ws_gateway": {"kernel"},
    "orchestrator": {"kernel", "backends", "worktrees", "ws_gateway"},
    "testkit": {"kernel", "backends", "worktrees", "ws_gateway", "orchestrator"},
    "bench": {"kernel", "backends", "worktrees", "ws_gateway", "orchestrator", "testkit"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # ``from orchestrator import db`` imports the subpackage orchestrator.db.
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def layer(module: str) -> str | None:
    """The orchestrator layer of a module path (``orchestrator.dispatch.turn`` -> ``dispatch``)."""
    parts = module.split(".")
    if parts[0] != "orchestrator" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return parts[1]


def source_files(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


@pytest.mark.parametrize("top", list(MAY_IMPORT))
def test_imports_run_one_way(top: str) -> None:
    wrong: list[str] = []
    for path in source_files(top):
        own = layer(module_name(path))
        for line, module in imports(path):
            target = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if target == "tests" or (target in MAY_IMPORT and target != top and target not in MAY_IMPORT[top]):
                wrong.append(where)
            elif own is not None and (theirs := layer(module)) is not None and LAYERS.index(theirs) > LAYERS.index(own):
                wrong.append(f"{where} (layer {own} must not import the higher layer {theirs})")
    assert not wrong, "imports against docs/ARCHITECTURE.md:\n" + "\n".join(wrong)


def test_other_packages_import_through_the_public_api() -> None:
    """Between top-level packages only ``from <package> import name``, never its modules."""
    wrong: list[str] = []
    for top in PACKAGES:
        for path in source_files(top):
            for line, module in imports(path):
                parts = module.split(".")
                if parts[0] in PACKAGES and parts[0] not in (top, "orchestrator") and len(parts) > 1:
                    submodule = importlib.util.find_spec(module) is not None
                    if submodule:
                        wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "import these from the package itself:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "package",
    [
        "kernel",
        "backends",
        "worktrees",
        "ws_gateway",
        "orchestrator.db",
        "orchestrator.dispatch",
        "orchestrator.services",
        "orchestrator.app",
    ],
)
def test_exported_members(package: str) -> None:
    """``__all__`` is exactly what the package's __init__ imports, and each of those exists."""
    module = importlib.import_module(package)
    init = Path(module.__file__ or "")
    bound = {
        alias.asname or alias.name
        for node in ast.parse(init.read_text()).body
        if isinstance(node, ast.ImportFrom) and node.module != "__future__"
        for alias in node.names
    }
    exported = set(module.__all__)
    assert exported == bound, f"{package}: __all__ and the imports differ by {sorted(exported ^ bound)}"
    for name in exported:
        assert getattr(module, name, None) is not None, f"{package}.{name} is exported but missing"


def test_the_installed_packages_import_from_anywhere(tmp_path: Path) -> None:
    """The venv's install (not pytest's sys.path) provides every package: `switchyard` and the
    benchmarks run from any directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import kernel, orchestrator, backends, worktrees, ws_gateway, testkit; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.stdout == "ok\n", done.stderr
