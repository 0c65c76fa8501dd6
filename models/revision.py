"""Revision fingerprint: one hash that changes whenever anything that can change a score
changes (weights, tokenizer, chat template, model config, head, spec). The spec enters as
its parsed canonical form only, not as the bytes of reward_spec.yaml, so an edit that changes
no score (a comment, process.threshold) keeps the revision, and with it the cache, the drift
baseline and the golden set recorded for it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from models.spec import SPEC_FILENAME

FINGERPRINTED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken", ".yaml", ".py")
# The version of how this code reads scores out of the same files (tokenization, pooling,
# heads): raised whenever a release scores the same files differently, so results cached by
# an older release (in a Redis shared across a rolling upgrade, say) are never served again.
SCORING_RULES = "2"


def fingerprint(dirs: list[Path], spec_json: str, extra_files: list[Path] = ()) -> str:
    """`extra_files` are hashed whatever their suffix (a backend's artifact, say)."""
    digest = hashlib.sha256()
    digest.update(f"rules:{SCORING_RULES}".encode())
    digest.update(spec_json.encode())
    seen = set()
    candidates = [p for d in dirs for p in sorted(d.iterdir())
                  if p.suffix in FINGERPRINTED_SUFFIXES and p.name != SPEC_FILENAME]
    for path in [*candidates, *extra_files]:
        if not path.is_file() or path.resolve() in seen:
            continue
        seen.add(path.resolve())
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
