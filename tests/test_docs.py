"""The documentation site: `mkdocs build --strict` (what `make docs` runs) builds every page
of mkdocs.yml's nav with no broken link or warning, and every module or folder the
architecture page names exists, so the page stays true as the code moves."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from paths import ROOT

DOCS = ROOT / "docs"


def test_the_site_builds_strict(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    for page in (next(iter(entry.values())) for entry in nav):
        built = tmp_path / ("index.html" if page == "index.md" else f"{page.removesuffix('.md')}/index.html")
        assert built.is_file(), page


def test_every_path_the_architecture_page_names_exists():
    named = re.findall(r"`((?:service|models|training)/[\w/.]*)`", (DOCS / "architecture.md").read_text())
    assert len(named) > 20
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, missing
