"""Packages the tests read files and code from without installing them: the wheel is
downloaded once (`pip download`, no dependencies) into the repository's `.cache/` and its
package folder unpacked there. llama-models, which ships Llama 3's tokenizer, cannot be
installed beside this repository: it also installs a top-level package named `models`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "wheels"
DOWNLOAD_TIMEOUT_S = 300


def unpacked(requirement: str, package: str) -> Path:
    """The folder holding `package` as the wheel of `requirement` (an exact `name==version`)
    ships it, so that it imports from there: `sys.path.insert(0, str(folder))`."""
    name, version = requirement.split("==")
    folder = CACHE / f"{name}-{version}"
    if not (folder / package).is_dir():
        wheel = _download(requirement, name, version)
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith(f"{package}/")]
            archive.extractall(folder.with_suffix(".partial"), members)
        folder.with_suffix(".partial").rename(folder)
    return folder


def _download(requirement: str, name: str, version: str) -> Path:
    wheels = CACHE / "downloads"
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    if not any(wheels.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", str(wheels), requirement], check=True, timeout=DOWNLOAD_TIMEOUT_S)
    return next(wheels.glob(pattern))
