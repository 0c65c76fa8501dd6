"""LoRA adapters over one loaded base model: every adapter a model entry names is loaded once
into the same weights (PEFT's multi-adapter PeftModel), and each forward runs on one of them
or on the base alone.

Why one adapter per forward (`set_adapter`) and not PEFT's mixed batch (`adapter_names`): a
packed forward (models.packing) runs a batch as one row, which a per-row adapter cannot
split, and the mixed forward computes each adapter's rows apart in every layer anyway. So the
scheduler batches items by adapter, and a batch switches the adapter on for its forward only:
at rest every adapter is off and the model is the base.

Nothing is left to chance at load: an adapter's tensors must all fit the base (PEFT's strict
check: no missing, unexpected or mis-shaped one), its target modules must exist, and a
tensor the base checkpoint lacks (a sequence-classification head over a plain causal LM) must
come, whole, from every adapter (its `modules_to_save`); the base then scores nothing itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import safe_open
from torch import nn

from models.errors import ModelLoadError
from models.revision import fingerprint

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SAVED_PREFIX = "base_model.model."  # how PEFT names the base's modules in an adapter file


class Adapters:
    """The adapters loaded over a base model, switched per forward."""

    def __init__(self, peft_model: nn.Module, revisions: dict[str, str], base_scores: bool):
        self.peft_model = peft_model
        self.revisions = revisions  # name -> sha256 of the adapter's files
        self.base_scores = base_scores  # False: the base lacks a tensor every adapter brings (its head)
        peft_model.base_model.disable_adapter_layers()

    @contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """`name`'s weights on for the duration (None: the base's, as at rest)."""
        if name is None:
            yield
            return
        self.peft_model.set_adapter(name, inference_mode=True)
        self.peft_model.base_model.enable_adapter_layers()
        try:
            yield
        finally:
            self.peft_model.base_model.disable_adapter_layers()


def whole_tensors(directory: Path) -> set[str]:
    """The base tensors an adapter file replaces whole (its `modules_to_save`: a trained head),
    named as the base checkpoint names them."""
    with safe_open(directory / WEIGHTS_FILE, "pt") as f:
        return {k.removeprefix(SAVED_PREFIX) for k in f.keys() if ".lora_" not in k}


def check_adapter_dir(name: str, directory: Path) -> None:
    """A LoRA adapter in PEFT's layout, whose training left the base's own weights as they are."""
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / f).is_file()]
    if missing:
        raise ModelLoadError(f"adapter {name!r}: {directory} has no {' or '.join(missing)} (PEFT's save_pretrained "
                             "layout; pickle checkpoints are refused)")
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("peft_type") != "LORA":
        raise ModelLoadError(f"adapter {name!r}: peft_type {config.get('peft_type')!r}; only LoRA adapters are served")
    if config.get("bias", "none") != "none":
        raise ModelLoadError(f"adapter {name!r}: bias {config['bias']!r} trains the base's own biases, which the base "
                             "and every other adapter share; only bias 'none' is served")


def check_untrained(untrained: list[str], adapters: dict[str, Path]) -> None:
    """Tensors the base checkpoint lacks must come from every adapter, or they stay random."""
    for name, directory in adapters.items():
        lacking = sorted(set(untrained) - whole_tensors(directory))
        if lacking:
            raise ModelLoadError(
                f"adapter {name!r}: the base checkpoint has no {', '.join(lacking[:12])} and the adapter does not "
                "carry it (modules_to_save), so its head would stay random; train the adapter with "
                "modules_to_save=['score'] (decoders) or ['classifier'] (encoders), or serve a base that has its head")


def attach_adapters(model: nn.Module, adapters: dict[str, Path], untrained: list[str],
                    reads_lm_rows: bool) -> Adapters:
    """Every adapter loaded over `model` (changed in place: its adapted layers become PEFT's),
    each one's load refused on any tensor that does not fit. `reads_lm_rows`: the model's
    scores are read from rows of its LM head, which an adapter may then not change."""
    from peft import PeftModel  # the serve extra's; imported only where adapters are served

    peft_model = None
    for name, directory in adapters.items():
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, directory, adapter_name=name,
                                                       strict_adapter_check="error")
            else:
                peft_model.load_adapter(directory, adapter_name=name, strict_adapter_check="error")
        except (ValueError, RuntimeError, KeyError) as err:
            raise ModelLoadError(f"adapter {name!r} ({directory}) does not fit the base "
                                 f"{type(model).__name__}: {err}") from err
    if reads_lm_rows and _is_adapted(model.get_output_embeddings()):
        raise ModelLoadError(f"adapters {sorted(adapters)}: one adapts the LM head, whose rows this model's scores "
                             "are read from; leave lm_head out of target_modules and modules_to_save")
    revisions = {name: fingerprint([directory], "lora") for name, directory in adapters.items()}
    return Adapters(peft_model.eval(), revisions, base_scores=not untrained)


def _is_adapted(module: nn.Module | None) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    return isinstance(module, (BaseTunerLayer, ModulesToSaveWrapper))
