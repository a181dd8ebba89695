"""Real pip and uv for tests, isolated from this machine's configuration."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Installers must see only our index: no user/global config, no caches.
ISOLATED = {
    **os.environ,
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "UV_NO_CONFIG": "1",
    "UV_NO_CACHE": "1",
}


def uv() -> str:
    """The uv installed beside this interpreter (the dev extra), else the one on PATH."""
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.exists() else (shutil.which("uv") or "uv")


def uv_install(tmp_path: Path, venv: str, index: str, project: str, *args: str) -> str:
    """Install ``project`` from ``index`` into a fresh uv venv; the version it imports."""
    subprocess.run(
        [uv(), "venv", str(tmp_path / venv)], check=True, capture_output=True, env=ISOLATED
    )
    python = tmp_path / venv / "bin" / "python"
    cmd = [uv(), "pip", "install", "--python", str(python), "--index-url", index, *args, project]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ISOLATED, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = subprocess.run(
        [str(python), "-c", f"import {project}; print({project}.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()
