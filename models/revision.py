"""Revision fingerprint: one hash that changes whenever anything that can change a score
changes (weights, tokenizer, chat template, model config, head, spec)."""

from __future__ import annotations

import hashlib
from pathlib import Path

FINGERPRINTED_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken", ".yaml")


def fingerprint(dirs: list[Path], spec_json: str) -> str:
    digest = hashlib.sha256()
    digest.update(spec_json.encode())
    seen = set()
    for directory in dirs:
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.suffix not in FINGERPRINTED_SUFFIXES or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()
