"""Models named by a Hugging Face Hub id (`org/name`, `org/name@revision`) rather than a
directory: the snapshot huggingface_hub keeps in its cache, downloaded first when the hub
is reachable. Offline (HF_HUB_OFFLINE=1) only the cache is read, and a snapshot missing
from it is a load error saying how to fetch it."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

from models.errors import ModelLoadError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")


def is_hub_id(path: str) -> bool:
    """A model path that is no directory here but reads as `org/name[@revision]`."""
    return HUB_ID.match(path) is not None and not Path(path).expanduser().exists()


def hub_snapshot(path: str, download: bool = True) -> Path:
    """The local snapshot of hub id `path` (a branch, tag or commit after `@`; default main),
    fetched first when `download` and the hub is reachable, else read from the cache alone."""
    found = HUB_ID.match(path)
    if found is None:
        raise ModelLoadError(f"{path!r} is not a hub id (org/name or org/name@revision)")
    repo, revision = found["repo"], found["revision"]
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=not download))
    except LocalEntryNotFoundError as err:
        if not download:
            raise ModelLoadError(f"{path}: not fetched into the hub cache ({constants.HF_HUB_CACHE}) yet") from err
        if constants.HF_HUB_OFFLINE:
            fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
            raise ModelLoadError(
                f"{path}: not in the hub cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: fetch it "
                f"where the hub is reachable (`{fetch}`, with HF_HUB_CACHE pointing at this cache) or give a "
                "local directory") from err
        raise ModelLoadError(f"{path}: cannot download it from the hub: {err}") from err
    except (HFValidationError, OSError) as err:  # an unknown repo or revision, no access, a broken cache
        raise ModelLoadError(f"{path}: {err}") from err
