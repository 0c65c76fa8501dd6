"""A checkpoint directory as a verified torch module: the transformers class its reward spec
implies, every tensor of the checkpoint read and none left random, on one device or spread
over several by a device map (models.dispatch), with our head file where the backbone's
final states come out, as the graph the backends run (models.graph)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from models.adapters import attach_adapters, check_adapter_dir, check_untrained
from models.convert import checkpoint_tensors
from models.dispatch import DeviceMap, input_device
from models.encoding import single_token_id
from models.errors import ModelLoadError
from models.graph import RewardGraph
from models.heads import HeadFile
from models.pair_encoding import PairEncoder
from models.pairrm import PairRMHead
from models.spec import ModelKind, Pooling, RewardSpec

hf_logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_encoder_config(config) -> bool:
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def build_graph(backbone_dir: Path, model_dir: Path, spec: RewardSpec, config, tokenizer, device: str,
                dtype: str, device_map: DeviceMap | None = None, reference_dir: Path | None = None,
                adapters: dict[str, Path] | None = None) -> RewardGraph:
    """The torch graph of a model directory: backbone weights, our head file if any, an
    implicit model's reference LM from `reference_dir`, LoRA `adapters` (name -> directory)
    over the backbone (models.adapters). With a `device_map` the backbone stays where
    transformers dispatched it (`device` is unused) and gives its final states back on its
    input device, where the head file goes."""
    adapters = adapters or {}
    if adapters and device_map is not None:
        raise ModelLoadError(f"{model_dir}: adapters are not applied to a model spread by a device_map")
    for name, directory in adapters.items():
        check_adapter_dir(name, directory)
    model, untrained = _load_backbone(backbone_dir, spec, config, DTYPES[dtype], device, device_map,
                                      missing_ok=bool(adapters))
    model.eval()
    reference = None
    if reference_dir is not None:
        if device_map is not None:
            raise ModelLoadError(f"{model_dir}: an implicit model's reference is not spread by a device_map")
        reference_config = AutoConfig.from_pretrained(reference_dir, trust_remote_code=spec.trust_remote_code)
        reference, _ = _load_backbone(reference_dir, spec, reference_config, DTYPES[dtype], device, None)
        reference = reference.eval().to(device)
    if spec.backbone_weights:
        if device_map is not None:
            raise ModelLoadError(f"{model_dir}: backbone_weights are not applied to a model spread by a device_map")
        replace_weights(model, model_dir / spec.backbone_weights)
    if device_map is None:
        model = model.to(device)
    check_untrained(untrained, adapters)
    head = None
    if spec.head_file or spec.value_head:
        head_device = input_device(model) if device_map else device
        head = (HeadFile.load(model_dir / spec.head_file) if spec.head_file
                else value_head(backbone_dir, spec.value_head))
        head = head.to(device=head_device, dtype=DTYPES[dtype]).eval()
    step_tag_ids = None
    if spec.process and spec.process.convention == "step_tag" and head is None:
        p = spec.process
        step_tag_ids = [single_token_id(tokenizer, p.bad_token, "process.bad_token"),
                        single_token_id(tokenizer, p.good_token, "process.good_token")]
    label_ids, pair_head = None, None
    if spec.label_tokens:
        label_ids = [single_token_id(tokenizer, label, f"label_tokens.labels[{i}]")
                     for i, label in enumerate(spec.label_tokens.labels)]
    if _is_pairrm(spec):
        head_device = input_device(model) if device_map else device
        pair_head = PairRMHead.load(backbone_dir, config, PairEncoder.prefix_ids_of(tokenizer, spec.pairwise))
        pair_head = pair_head.to(device=head_device, dtype=DTYPES[dtype]).eval()
    elif spec.pairwise:
        label_ids = [single_token_id(tokenizer, label, f"pairwise.labels[{i}]")
                     for i, label in enumerate(spec.pairwise.labels)]
    encoder = is_encoder_config(config)
    pooling = spec.pooling or default_pooling(spec, encoder)
    pad_token_id = config.get_text_config().pad_token_id
    reads_lm_rows = head is None and bool(step_tag_ids or label_ids or spec.reward_logit_index is not None)
    loaded = attach_adapters(model, adapters, untrained, reads_lm_rows) if adapters else None
    graph = RewardGraph(model, head, spec, encoder, pooling, step_tag_ids, pad_token_id, label_ids, reference,
                        pair_head, loaded).eval()
    _check_readable(graph, spec)
    return graph


def value_head(directory: Path, name: str) -> HeadFile:
    """OpenRLHF's linear value head (models.openrlhf), read from the checkpoint, as a head."""
    weight = f"{name}.weight"
    found = checkpoint_tensors(directory, (weight,))
    if weight not in found:
        raise ModelLoadError(f"{directory}: the checkpoint has no value head tensor {weight}")
    return HeadFile({"reward.0.weight": found[weight]})


def default_pooling(spec: RewardSpec, is_encoder: bool) -> Pooling:
    """[CLS] for encoders; for decoders transformers' own rule when the checkpoint's
    classification head is read, else the last real token (OpenRLHF's value head's rule too)."""
    if is_encoder:
        return Pooling.cls
    if spec.head_file or spec.value_head or spec.reward_logit_index is not None or spec.label_tokens or spec.pairwise:
        return Pooling.last
    return Pooling.last_non_pad


def _check_readable(graph: RewardGraph, spec: RewardSpec) -> None:
    """The loaded module has the part the graph reads scores from (a remote-code class may
    have none of the standard ones)."""
    model = graph.model
    token_ids = graph.step_tag_ids or graph.label_ids or (
        [spec.reward_logit_index] if spec.reward_logit_index is not None else None)
    if token_ids is not None:
        lm_head = model.get_output_embeddings()
        rows = lm_head.weight.shape[0] if lm_head is not None else 0
        if max(token_ids) >= rows:
            raise ModelLoadError(f"{type(model).__name__}: no LM head row {max(token_ids)} to read a logit from")
    elif graph.head is None and not graph.is_encoder and spec.kind in (ModelKind.scalar, ModelKind.multi_objective):
        if not isinstance(getattr(model, "score", None), torch.nn.Module):
            raise ModelLoadError(
                f"{type(model).__name__} has no `score` layer to read a sequence score from; for a custom "
                "(remote-code) head, convert it with `rewardserve convert` or give a head_file")


def _attention(spec: RewardSpec, dtype: torch.dtype, on_cuda: bool) -> dict:
    """flash-attention 2 where it is installed and runs (transformers' own classes on a CUDA
    device in half precision): its variable-length kernels let packed batches compute real
    tokens only. Otherwise transformers' default (sdpa)."""
    usable = (on_cuda and dtype in (torch.bfloat16, torch.float16)
              and not spec.trust_remote_code and importlib.util.find_spec("flash_attn") is not None)
    return {"attn_implementation": "flash_attention_2"} if usable else {}


def _load_backbone(directory: Path, spec: RewardSpec, config, dtype: torch.dtype, device: str,
                   device_map: DeviceMap | None, missing_ok: bool = False) -> tuple[torch.nn.Module, list[str]]:
    """The checkpoint as the transformers class the spec implies, every tensor accounted
    for: a missing, unexpected or mis-shaped weight is a load error naming it, never a
    randomly initialised layer (tensors left unread on purpose are named in unused_weights).
    With `missing_ok` (adapters are loaded over it), missing tensors are returned instead, for
    every adapter to bring whole (models.adapters)."""
    remote = spec.trust_remote_code
    on_cuda = device_map.uses_cuda if device_map else str(device).startswith("cuda")
    # mismatched shapes are reported in the loading info (and refused below), not raised
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=remote, output_loading_info=True,
                  ignore_mismatched_sizes=True, **_attention(spec, dtype, on_cuda),
                  **(device_map.from_pretrained_kwargs() if device_map else {}))
    if _is_pairrm(spec):  # the backbone's tensors under `pretrained_model.`, its head beside them
        auto = AutoModel
        kwargs["key_mapping"] = {r"^pretrained_model\.": ""}
    elif spec.head_file or spec.value_head:
        auto = AutoModel
    elif spec.kind == ModelKind.process:
        auto = AutoModelForCausalLM if spec.process.convention == "step_tag" else AutoModelForTokenClassification
    elif spec.reward_logit_index is not None or spec.label_tokens or spec.kind in (ModelKind.implicit,
                                                                                   ModelKind.pairwise):
        auto = AutoModelForCausalLM
    else:
        auto = AutoModelForSequenceClassification
    try:
        model, info = auto.from_pretrained(directory, config=config, **kwargs)
    except ValueError as err:
        if not remote:
            raise ModelLoadError(f"{directory}: cannot load as {auto.__name__}: {err}") from err
        # remote-code reward models often register only AutoModel
        model, info = AutoModel.from_pretrained(directory, config=config, **kwargs)
    read_elsewhere = [f"{spec.value_head}."] if spec.value_head else []  # the graph's head reads it
    read_elsewhere += ["head_layer."] if _is_pairrm(spec) else []
    untrained = sorted(info["missing_keys"]) if missing_ok else []
    if untrained:  # a causal LM under the adapters' head: its LM head is not read
        read_elsewhere.append("lm_head.")
    _check_loading_info(directory, info | {"missing_keys": [] if missing_ok else info["missing_keys"]},
                        [*spec.unused_weights, *read_elsewhere])
    return model, untrained


def _is_pairrm(spec: RewardSpec) -> bool:
    return spec.pairwise is not None and spec.pairwise.convention == "pairrm"


def replace_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy a fine-tune's tensors over the backbone's own, in the backbone's dtype; a tensor
    the backbone lacks or has in another shape is a load error naming it (it would be unread,
    or not fit)."""
    if not path.is_file():
        raise ModelLoadError(f"backbone_weights {path} does not exist")
    own = model.state_dict()
    tensors = load_file(path)
    unknown = sorted(k for k in tensors if k not in own)
    misfit = sorted(f"{k} {tuple(t.shape)} vs {tuple(own[k].shape)}" for k, t in tensors.items()
                    if k in own and t.shape != own[k].shape)
    if unknown or misfit:
        raise ModelLoadError(f"{path}: backbone_weights do not fit {type(model).__name__}: "
                             + "; ".join(f"{what}: {', '.join(names[:12])}" for what, names in
                                         (("not in the backbone", unknown), ("shape mismatch", misfit)) if names))
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].dtype))


def _mismatch(entry) -> str:
    """transformers 5 reports (name, checkpoint shape, model shape); 4.x the name alone."""
    if isinstance(entry, str):
        return entry
    name, *shapes = entry
    return f"{name} {' vs '.join(str(tuple(s)) for s in shapes)}"


def _check_loading_info(directory: Path, info: dict, unused: list[str]) -> None:
    """transformers' loading report, refused unless every tensor was read as it is."""
    unexpected = sorted(k for k in info["unexpected_keys"] if not any(k.startswith(p) for p in unused))
    problems = [f"{what}: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
                for what, names in (
                    ("missing (would be random)", sorted(info["missing_keys"])),
                    ("unexpected (not read)", unexpected),
                    ("shape mismatch", sorted(map(_mismatch, info["mismatched_keys"]))),
                    ("errors", list(info["error_msgs"])),
                ) if names]
    if problems:
        raise ModelLoadError(f"{directory}: the checkpoint does not fit the model class: " + "; ".join(problems))
