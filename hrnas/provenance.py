"""Where a result came from: the package versions and the git commit of the code that produced it.

Every ``run.json`` (a search or training run), the notebook batch's ``runs.json`` and the tiny-seeds
summaries record these, so that a number can be traced to the code and the environment behind it.
"""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

BASE_PACKAGES = ("torch", "torchvision", "numpy")


def versions(*packages: str) -> dict:
    """Python, hrnas and the installed versions of ``BASE_PACKAGES`` + ``packages`` (None: not installed)."""
    import hrnas

    out = {"python": platform.python_version(), "hrnas": getattr(hrnas, "__version__", None)}
    for dist in (*BASE_PACKAGES, *packages):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_info(folder=None) -> dict:
    """``{"commit", "dirty"}`` of the repository holding ``folder`` (default: this package's checkout);
    both None outside a git checkout. Read-only git calls."""
    import hrnas

    folder = Path(folder) if folder is not None else Path(hrnas.__file__).parent

    def git(*args):
        try:
            r = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args],
                               capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}
