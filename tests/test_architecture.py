"""The house rules of docs/architecture.md, read from the source: layers point one way (in the order
the doc lists them), private names stay home, no import cycles, Prefect stays thin, only
``backends/fal.py`` imports fal_client, and only ``media/`` and the emulator's renderer run ffmpeg.

Every import in every module under ``src/klingflow`` counts, including imports inside functions and
under ``TYPE_CHECKING``: a cycle that only a type checker or a lazy call walks is still a cycle a
reader has to untangle. Each rule is a function of source text, and each is shown to fail on a small
synthetic module that breaks it, so a scan that went blind would be seen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "klingflow"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PREFECT_LAYER = ("klingflow.tasks", "klingflow.flows", "klingflow.blocks", "klingflow.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package_of(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _source_imports(tree: ast.AST, package: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in ``tree``, anywhere
    in it (functions and ``if TYPE_CHECKING:`` included); relative imports resolved from ``package``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"))


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in the module."""
    return _source_imports(_tree(module), _package_of(module))


def _klingflow_targets(imports: list[tuple[str, list[str], int]], modules: set[str]) -> set[tuple[str, int]]:
    """(klingflow module, line) each import reaches (``from pkg import submodule`` counts the submodule)."""
    targets = set()
    for target, names, line in imports:
        if not target.startswith("klingflow"):
            continue
        submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
        targets.update((found, line) for found in submodules or ([target] if target in modules else []))
    return targets


def _edges(module: str) -> set[str]:
    """The klingflow modules this one imports (``from pkg import submodule`` counts the submodule)."""
    targets = {target for target, _ in _klingflow_targets(_imports(module), set(MODULES))}
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


# --- layers point one way, in the order docs/architecture.md lists them ---------------------------


def _doc_layers(text: str) -> list[list[str]]:
    """The layers of the doc's ``Layers point one way:`` line, lowest first: names split by ``←``."""
    found = re.search(r"Layers point one way:(.*?`)\.\s", text, re.S)
    assert found, "docs/architecture.md has no 'Layers point one way: `a` ← `b` ... .' line"
    return [re.findall(r"`([\w.]+)`", layer) for layer in found.group(1).split("←")]


LAYERS = _doc_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The index of the layer holding ``module``'s top package (``klingflow.X...`` -> ``X``)."""
    top = module.split(".")[1] if module.count(".") else None
    return next((i for i, layer in enumerate(layers) if top in layer), None)


def _layer_offences(
    module: str, source: str, layers: list[list[str]], modules: set[str], package: str
) -> list[str]:
    """Each import of ``module`` (top-level, in a function or under TYPE_CHECKING) of a higher layer."""
    own = _layer_of(module, layers)
    if own is None:
        return []
    offences = []
    for target, line in sorted(_klingflow_targets(_source_imports(ast.parse(source), package), modules)):
        theirs = _layer_of(target, layers)
        if theirs is not None and theirs > own:
            offences.append(
                f"{module}:{line} imports {target}, a higher layer ({' '.join(layers[theirs])} above "
                f"{' '.join(layers[own])})"
            )
    return offences


def test_the_doc_lists_every_package_in_exactly_one_layer() -> None:
    assert len(LAYERS) >= 8 and LAYERS[0] == ["errors", "settings", "_files"] and LAYERS[-1] == ["cli"]
    tops = [name for layer in LAYERS for name in layer]
    assert len(tops) == len(set(tops)), f"a package is listed in two layers: {tops}"
    actual = {module.split(".")[1] for module in MODULES if module != "klingflow"}
    assert actual == set(tops), f"not in the doc's layers: {actual - set(tops)}; gone: {set(tops) - actual}"


def test_layers_point_one_way() -> None:
    offences = [
        offence
        for module, path in MODULES.items()
        for offence in _layer_offences(
            module, path.read_text(encoding="utf-8"), LAYERS, set(MODULES), _package_of(module)
        )
    ]
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize(
    ("module", "source", "offends"),
    [
        ("klingflow.spec._check", "from klingflow.engine import run\n", "klingflow.engine.run"),
        ("klingflow.spec._check", "from klingflow import engine\n", "klingflow.engine"),
        ("klingflow.media._probe", "def f():\n    import klingflow.spec\n", "klingflow.spec"),
        (
            "klingflow.media._probe",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from klingflow.backends.fal import X\n",
            "klingflow.backends.fal",
        ),
        ("klingflow.spec._check", "from ..engine.run import arun\n", "klingflow.engine.run"),
        ("klingflow.engine.run", "from klingflow.flows.pipeline import run_pipeline\n", "klingflow.flows"),
        ("klingflow.engine.run", "from klingflow.spec import check\nfrom klingflow import errors\n", None),
        ("klingflow.backends.fal", "from klingflow.cache import Store\n", None),  # one layer: peers
    ],
)
def test_the_layer_check_catches_an_import_upward(module: str, source: str, offends: str | None) -> None:
    package = module.rpartition(".")[0]
    found = _layer_offences(module, source, LAYERS, set(MODULES), package)
    assert (offends in "\n".join(found)) if offends else not found, found


# --- only backends/fal.py imports fal_client -----------------------------------------------------

FAL_CLIENT_HOME = "klingflow.backends.fal"


def _fal_client_offences(module: str, source: str) -> list[str]:
    """Each import of fal_client (or a submodule) anywhere in ``module`` unless it is backends/fal.py."""
    if module == FAL_CLIENT_HOME:
        return []
    return [
        f"{module}:{line} imports {target}"
        for target, _, line in _source_imports(ast.parse(source), module)
        if target.split(".")[0] == "fal_client"
    ]


def test_only_backends_fal_imports_fal_client() -> None:
    offences = [
        o for module, path in MODULES.items() for o in _fal_client_offences(module, path.read_text("utf-8"))
    ]
    assert not offences, "\n".join(offences)
    assert any(target == "fal_client" for target, _, _ in _imports(FAL_CLIENT_HOME)), "the scan sees fal.py's"


@pytest.mark.parametrize(
    ("module", "source", "offends"),
    [
        ("klingflow.engine.generation", "import fal_client\n", True),
        (
            "klingflow.backends.config",
            "def hosts():\n    from fal_client.client import QUEUE_URL_FORMAT\n",
            True,
        ),
        ("klingflow.emulator.embedded", "import fal_client.client as client\n", True),
        ("klingflow.backends.platform", "if TYPE_CHECKING:\n    from fal_client import AsyncClient\n", True),
        ("klingflow.backends.fal", "import fal_client\nfrom fal_client import client\n", False),
        ("klingflow.backends.config", "import sys\nclient = sys.modules.get('fal_client.client')\n", False),
    ],
)
def test_the_fal_client_check_catches_an_import_elsewhere(module: str, source: str, offends: bool) -> None:
    assert bool(_fal_client_offences(module, source)) is offends


# --- only media/ and the emulator's renderer run ffmpeg -------------------------------------------
#
# How ffmpeg is run today: media/_run.py finds the executable (KLINGFLOW_FFMPEG, shutil.which("ffmpeg"),
# else imageio_ffmpeg.get_ffmpeg_exe()) and runs an ffmpeg-python graph (ffmpeg.compile) with
# subprocess.run in run_ffmpeg; media/ and the emulator's renderer build the graphs (import ffmpeg) and
# the renderer calls media.run_ffmpeg; media/ decodes with PyAV (import av, ffmpeg's libraries in
# process). Each of these is a use; anywhere else one is an offence.

FFMPEG_MODULES = ("ffmpeg", "imageio_ffmpeg", "av")
"""ffmpeg-python, imageio-ffmpeg (the bundled binary) and PyAV (libav* in process)."""
FFMPEG_RUNNERS = ("run_ffmpeg", "ffmpeg_executable", "get_ffmpeg_exe")
"""media's one runner and executable lookup, and imageio-ffmpeg's."""
_STARTS_PROCESS = re.compile(
    r"^(subprocess\.\w+|os\.(system|popen|exec\w*|spawn\w*|posix_spawnp?)|asyncio\.create_subprocess_\w+"
    r"|shutil\.which)$"
)
_FFMPEG_WORD = re.compile(r"(^|[/\\\s])ff(mpeg|probe)(\.exe)?($|\s)")


def _runs_ffmpeg_here(module: str) -> bool:
    return module.startswith("klingflow.media") or re.fullmatch(r"klingflow\.emulator\._?render\w*", module)


def _ffmpeg_uses(module: str, source: str) -> list[str]:
    """Each way ``module`` runs (or finds) ffmpeg: imports, media's runner, a process named ffmpeg."""
    tree = ast.parse(source)
    uses = []
    for target, names, line in _source_imports(tree, module):
        if target.split(".")[0] in FFMPEG_MODULES:
            uses.append(f"{module}:{line} imports {target}")
        elif target.startswith("klingflow"):
            uses += [
                f"{module}:{line} takes {name} from {target}" for name in names if name in FFMPEG_RUNNERS
            ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in FFMPEG_RUNNERS:
            uses.append(f"{module}:{node.lineno} uses {ast.unparse(node)}")
        if isinstance(node, ast.Call) and _STARTS_PROCESS.match(ast.unparse(node.func)):
            words = [
                c.value
                for arg in [*node.args, *(k.value for k in node.keywords)]
                for c in ast.walk(arg)
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and _FFMPEG_WORD.search(c.value)
            ]
            if words:
                uses.append(f"{module}:{node.lineno} runs {ast.unparse(node.func)}({words[0]!r}, ...)")
    return uses


def test_only_media_and_the_emulator_renderer_run_ffmpeg() -> None:
    uses = {module: _ffmpeg_uses(module, path.read_text("utf-8")) for module, path in MODULES.items()}
    offences = [use for module, found in uses.items() if not _runs_ffmpeg_here(module) for use in found]
    assert not offences, "\n".join(offences)
    # The scan sees how ffmpeg is run today (so it is not blind to the real code).
    runner = "\n".join(uses["klingflow.media._run"])
    assert (
        "imports ffmpeg" in runner
        and "imports imageio_ffmpeg" in runner
        and "shutil.which('ffmpeg'" in runner
    )
    assert any("run_ffmpeg" in use for use in uses["klingflow.emulator.render"])
    assert any("imports av" in use for use in uses["klingflow.media._probe"])


@pytest.mark.parametrize(
    ("module", "source", "offends"),
    [
        ("klingflow.report._page", "import ffmpeg\n", True),
        ("klingflow.engine.operation", "def f():\n    from imageio_ffmpeg import get_ffmpeg_exe\n", True),
        ("klingflow.flows.artifacts", "if TYPE_CHECKING:\n    import av\n", True),
        ("klingflow.engine.operation", "from klingflow.media import run_ffmpeg\n", True),
        ("klingflow.emulator.jobs", "from klingflow import media\nmedia.run_ffmpeg(['-i', 'x'])\n", True),
        (
            "klingflow.engine.operation",
            "import subprocess\nsubprocess.run(['ffmpeg', '-i', 'a.mp4'])\n",
            True,
        ),
        (
            "klingflow.cli.run",
            "import asyncio\nasyncio.create_subprocess_exec('/usr/bin/ffprobe', 'x')\n",
            True,
        ),
        ("klingflow.engine.recording", "import os\nos.system('ffmpeg -i a.mp4 b.mp4')\n", True),
        ("klingflow.report._media", "import shutil\nshutil.which('ffmpeg')\n", True),
        ("klingflow.media._run", "import ffmpeg, subprocess\nsubprocess.run(['ffmpeg'])\n", False),
        ("klingflow.emulator._render_effects", "import ffmpeg\n", False),
        ("klingflow.emulator.render", "from klingflow.media import run_ffmpeg\n", False),
        (
            "klingflow.prefect_server._supervisor",
            "import subprocess\nsubprocess.run(['ps', '-p', '1'])\n",
            False,
        ),
        ("klingflow.engine.operation", "from klingflow.media import concat\nconcat([], 'out.mp4')\n", False),
        ("klingflow.cli.run", "message = 'ffmpeg failed'\nprint(message)\n", False),
    ],
)
def test_the_ffmpeg_check_catches_a_run_elsewhere(module: str, source: str, offends: bool) -> None:
    found = _ffmpeg_uses(module, source)
    assert bool(found and not _runs_ffmpeg_here(module)) is offends, found
