"""What klingflow imports is what it declares, and the bundled ffmpeg has what klingflow asks of it.

A package that is only installed because another one needs it (pydantic-settings came with prefect,
certifi with httpx) breaks the day that other one drops it; so every third-party module that
``src/`` imports must come from a distribution ``pyproject.toml`` lists in ``dependencies``, and
every one the tests and benchmarks import from those or the ``test`` extra. The module -> distribution
map is the installed one (``importlib.metadata.packages_distributions``).

The ffmpeg check reads the filters, lavfi sources and encoders the code names (ffmpeg-python calls
and ffmpeg argument lists) and asks the bundled binary (imageio-ffmpeg) whether it has each.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

_FFMPEG_METHODS = {"overlay", "drawtext", "drawbox", "zoompan", "hue", "colorchannelmixer", "hflip", "vflip"}
"""ffmpeg-python's stream methods that are filters of the same name (``.crop`` and ``.trim`` are left out:
Pillow and str have them too, and the code calls them as ``.filter("crop")``)."""


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for e in extras for s in project["optional-dependencies"][e])]
    return {_normalised(re.match(r"[A-Za-z0-9._-]+", spec).group()) for spec in specs}


def _imported(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source``, inside functions and TYPE_CHECKING too."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def undeclared(sources: dict[str, str], declared: set[str], local: set[str]) -> dict[str, str]:
    """{module: why} for each third-party module the sources import that no declared distribution gives."""
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for path, source in sources.items():
        for module in sorted(_imported(source) - local - set(sys.stdlib_module_names)):
            given = {_normalised(d) for d in providers.get(module, [])}
            if not given:
                missing[module] = f"{path}: not installed, so no distribution is known to give it"
            elif not given & declared:
                missing[module] = (
                    f"{path}: comes from {', '.join(sorted(given))}, which pyproject.toml does not list"
                )
    return missing


def _sources(*folders: str) -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text(encoding="utf-8")
        for folder in folders
        for path in sorted((REPO / folder).rglob("*.py"))
    }


def test_every_third_party_module_src_imports_is_a_declared_dependency() -> None:
    assert undeclared(_sources("src"), _declared(), {"klingflow"}) == {}


def test_every_module_the_tests_and_benchmarks_import_is_declared_with_the_test_extra() -> None:
    local = {"klingflow", *(p.stem for p in (REPO / "tests").glob("*.py"))}
    local |= {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    assert undeclared(_sources("tests", "benchmarks", "deployments"), _declared("test"), local) == {}


def test_the_check_names_a_module_that_only_comes_along_with_another_package() -> None:
    code = "import certifi\nfrom pydantic_settings import BaseSettings\nimport json\nimport klingflow\n"
    found = undeclared({"synthetic.py": code}, {"prefect", "httpx"}, {"klingflow"})
    assert set(found) == {"certifi", "pydantic_settings"}
    assert "comes from pydantic-settings, which pyproject.toml does not list" in found["pydantic_settings"]
    assert (
        "not installed"
        in undeclared({"synthetic.py": "import no_such_module_here"}, set(), set())["no_such_module_here"]
    )


def ffmpeg_needs(sources: dict[str, str]) -> tuple[set[str], set[str]]:
    """(filters and lavfi sources, encoders) the code names: ``.filter("x")``, ``ffmpeg.filter(s, "x")``,
    ffmpeg-python's filter methods, ``ffmpeg.input("src=...", f="lavfi")``, ``"c:v": "x"``, ``-c:a x``."""
    filters, encoders = set(), set()
    for source in sources.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr, first = node.func.attr, node.args[:2]
                if attr in ("filter", "filter_", "filter_multi_output"):
                    named = [
                        a.value for a in first if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    ]
                    assert named, f"a filter named at run time: {ast.unparse(node)}"
                    filters.add(named[0])
                elif attr in _FFMPEG_METHODS or (
                    attr == "concat"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "ffmpeg"
                ):
                    filters.add(attr)
                elif attr == "input" and any(
                    k.arg == "f" and isinstance(k.value, ast.Constant) and k.value.value == "lavfi"
                    for k in node.keywords
                ):
                    graph = node.args[0]
                    text = graph.values[0].value if isinstance(graph, ast.JoinedStr) else graph.value
                    filters.add(str(text).partition("=")[0])
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in ("c:v", "c:a", "vcodec", "acodec"):
                        if isinstance(value, ast.Constant) and value.value != "copy":
                            encoders.add(value.value)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                encoders |= set(re.findall(r"-c:[av] (\w+)", node.value))
    return filters, encoders


def _ffmpeg_lists(*what: str) -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    binary = imageio_ffmpeg.get_ffmpeg_exe()
    return "\n".join(
        subprocess.run([binary, "-hide_banner", f"-{w}"], capture_output=True, text=True, check=True).stdout
        for w in what
    )


def test_the_bundled_ffmpeg_has_every_filter_and_encoder_klingflow_uses() -> None:
    filters, encoders = ffmpeg_needs(_sources("src"))
    assert {"xfade", "zoompan", "acrossfade", "anullsrc", "overlay", "concat"} <= filters, (
        "the scan reads the code"
    )
    assert {"libx264", "aac", "libmp3lame"} <= encoders, "the scan reads the code"
    available = _ffmpeg_lists("filters")
    listed = set(re.findall(r"^ [A-Z.|]{2,3} +(\w+) ", available, re.M))
    assert filters - listed == set(), available
    coders = set(re.findall(r"^ [A-Z.]{6} +(\w+) ", _ffmpeg_lists("encoders"), re.M))
    assert encoders - coders == set()
