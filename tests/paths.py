"""Where the repository's files are, for the tests in every folder of tests/."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# the real data sets beside the checkout (HH-RLHF for the drift and held-out tests)
DATA = ROOT.parent / "shared" / "data"
