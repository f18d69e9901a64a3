"""The import contracts in ``.importlinter`` (DESIGN.md "Layers") hold, and the check can fail.

``lint-imports`` runs in a subprocess, from the interpreter's own environment, on the installed
(editable) ``vidconv_deploy``; a broken contract fails the test with import-linter's report, which
names every offending import and its line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / ".importlinter"
PACKAGE = ROOT / "vidconv_deploy"


def lint_imports(config: Path) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "lint-imports"
    if not script.exists():
        pytest.fail(f"{script} is missing: install the test extras (bash scripts/venv.sh)")
    return subprocess.run([str(script), "--no-cache", "--no-logo", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_import_contracts_hold() -> None:
    run = lint_imports(CONTRACTS)
    assert run.returncode == 0, f"lint-imports {CONTRACTS.name} failed:\n{run.stdout}{run.stderr}"
    assert "0 broken" in run.stdout, run.stdout


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The same kind of contract with two layers swapped must fail and name the imports: the check is live."""
    config = tmp_path / "swapped.ini"
    config.write_text(
        "[importlinter]\nroot_package = vidconv_deploy\n\n"
        "[importlinter:contract:swapped]\nname = fixpoint above quant (wrong on purpose)\ntype = layers\n"
        "containers = vidconv_deploy\nlayers =\n    fixpoint\n    quant\n"
    )
    run = lint_imports(config)
    assert run.returncode != 0, f"a contract that existing imports break was kept:\n{run.stdout}{run.stderr}"
    assert "BROKEN" in run.stdout, run.stdout
    assert "vidconv_deploy.quant is not allowed to import vidconv_deploy.fixpoint" in run.stdout, run.stdout
    assert "vidconv_deploy.quant.qdq -> vidconv_deploy.fixpoint" in run.stdout, run.stdout


def _source_folders() -> list[str]:
    """Folders below the package holding Python files (links, the shipped data folders, are not followed)."""
    found = set()
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(f.endswith(".py") for f in files):
            found.add(Path(folder).relative_to(ROOT).as_posix())
    return sorted(found)


@pytest.mark.parametrize("folder", _source_folders())
def test_every_package_is_visible_to_the_contracts(folder: str) -> None:
    """import-linter (grimp) skips a folder without ``__init__.py`` inside a package: no contract would see it."""
    assert (ROOT / folder / "__init__.py").exists(), f"{folder} has no __init__.py, so .importlinter cannot check it"
