"""The house rules, read from the source: private names stay home, no import cycles, Prefect stays thin.

Every import in every module under ``src/klingflow`` counts, including imports inside functions and
under ``TYPE_CHECKING``: a cycle that only a type checker or a lazy call walks is still a cycle a
reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "klingflow"
PREFECT_LAYER = ("klingflow.tasks", "klingflow.flows", "klingflow.blocks", "klingflow.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in the module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = _package_of(module).split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def _edges(module: str) -> set[str]:
    """The klingflow modules this one imports (``from pkg import submodule`` counts the submodule)."""
    targets = set()
    for target, names, _ in _imports(module):
        if not target.startswith("klingflow"):
            continue
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES]
        targets.update(submodules or ([target] if target in MODULES else []))
    targets.discard(module)
    return targets


def test_the_scan_sees_the_whole_package() -> None:
    assert {"klingflow.engine.run", "klingflow.cli", "klingflow.errors", "klingflow.cache.store"} <= set(
        MODULES
    )
    assert "klingflow.engine.runner" in _edges("klingflow.engine.run")


def test_no_module_imports_a_private_name_from_another_module() -> None:
    offences = []
    for module in MODULES:
        for target, names, line in _imports(module):
            if not target.startswith("klingflow") or target == module:
                continue
            offences += [
                f"{module}:{line} takes {name} from {target}" for name in names if name.startswith("_")
            ]
            private = [part for part in target.split(".") if part.startswith("_") and part != "__init__"]
            if private and not module.startswith(target.rsplit(".", 1)[0]):
                offences.append(
                    f"{module}:{line} imports the private module {target} from outside its package"
                )
    assert not offences, "\n".join(offences)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    path: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        on_path.discard(path.pop())
        done.add(node)
        return None

    return visit(start)


def test_no_import_cycles() -> None:
    graph = {module: _edges(module) for module in MODULES}
    cycles = {" -> ".join(c) for m in MODULES if (c := _cycle_from(m, graph))}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_prefect_is_imported_only_by_the_prefect_layer(module: str) -> None:
    uses_prefect = [line for target, _, line in _imports(module) if target.split(".")[0] == "prefect"]
    if not module.startswith(PREFECT_LAYER):
        assert not uses_prefect, f"{module} imports prefect at line(s) {uses_prefect}"
