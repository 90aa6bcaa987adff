"""The README's set-up path (`make setup`, which `make demo` and `make test` run first) on a
system whose python3 refuses `pip install` (PEP 668, as on Debian 12 / Ubuntu 23.04+).

The externally managed interpreter is simulated faithfully: a copy of this python's (base)
binary whose prefix holds links to its standard library plus an EXTERNALLY-MANAGED marker, the
file pip itself checks. Its site-packages point (by a .pth file) at this interpreter's, so torch
is already there and the run needs no download but the build backend of the editable install.
Works from a venv too (CI made by `make`): the base binary is copied, the venv's packages seen.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _externally_managed_python(base: Path) -> Path:
    stdlib = Path(sysconfig.get_path("stdlib"))
    lib = base / "lib" / stdlib.name
    (base / "bin").mkdir(parents=True)
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    # every package dir this interpreter sees (system, Debian's dist-packages, a venv's own)
    dirs = dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")])
    (lib / "site-packages").mkdir()
    (lib / "site-packages" / "outer.pth").write_text("\n".join(dirs) + "\n")
    (lib / "EXTERNALLY-MANAGED").write_text(
        "[externally-managed]\nError=simulated by mimkit's tests\n"
    )
    python = base / "bin" / "python3"
    binary = getattr(sys, "_base_executable", sys.executable)
    shutil.copy2(os.path.realpath(binary), python)  # a copy: a link would lead back home
    return python


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_setup_uses_a_project_venv_when_python3_is_externally_managed(tmp_path):
    python = _externally_managed_python(tmp_path / "base")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    env["MIMKIT_DATA"] = str(tmp_path)  # never apt-get from a test
    refused = subprocess.run(
        ["python3", "-m", "pip", "install", "--dry-run", "--no-index", "mimkit"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "externally-managed" in refused.stderr  # the premise

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "Makefile", "scripts", "src", "configs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, clone / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        elif src.exists():
            shutil.copy2(src, clone / name)
    done = subprocess.run(
        ["make", "setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "externally managed" in done.stdout
    venv_python = clone / ".venv" / "bin" / "python"
    assert Path((clone / ".setup.stamp").read_text().strip()) == venv_python
    assert "keeping the installed torch" in done.stdout  # the system torch is seen, not reinstalled
    where = subprocess.run(
        [str(venv_python), "-c", "import mimkit, torch; print(mimkit.__file__)"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(clone / "src")  # the editable install
    # the README's two commands run with that interpreter (dry run: the recipes as make sees them)
    plan = subprocess.run(
        ["make", "-n", "demo", "test"], cwd=clone, env=env, capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr
    recipes = [
        line for line in plan.stdout.splitlines() if " -m " in line
    ]
    assert len(recipes) == 3 and all(line.startswith(str(venv_python)) for line in recipes)
    version = subprocess.run(
        [str(venv_python), "-m", "mimkit.cli", "--version"], env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("mimkit ")
