"""``src/`` type-checks: mypy, configured in pyproject.toml's ``[tool.mypy]``, reports no error.

The second test runs the same mypy, with the same configuration, on a small file that has a type
error and a ``# type: ignore`` that covers nothing, and expects both reported: so the first test
cannot pass because mypy checked nothing or ran without the project's settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO

_TIMEOUT = 900
"""Seconds a mypy run may take: a first run, with no cache, reads Prefect's and pandas' types."""


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
    )


def test_src_passes_mypy() -> None:
    done = _mypy()
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"mypy found errors (exit {done.returncode}):\n{output}"
    assert "Success: no issues found" in output, output


def test_mypy_reports_a_type_error_with_the_projects_settings(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(
        "def double(count: int) -> int:\n"
        "    return count * 2\n"
        "\n"
        "\n"
        'doubled: str = double("three")\n'
        "fine: int = double(3)  # type: ignore[arg-type]\n"
    )
    done = _mypy("--config-file", "pyproject.toml", "--cache-dir", str(tmp_path / "cache"), str(broken))
    output = done.stdout + done.stderr
    assert done.returncode == 1, f"mypy exit {done.returncode}:\n{output}"
    assert f"{broken}:5: error: Incompatible types in assignment" in output, output
    assert f'{broken}:5: error: Argument 1 to "double" has incompatible type "str"' in output, output
    # warn_unused_ignores comes from [tool.mypy]: reported only when pyproject.toml was read
    assert f'{broken}:6: error: Unused "type: ignore" comment' in output, output
