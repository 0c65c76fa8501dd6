"""A reward model loaded from disk: tokenization, a padded batched forward, and the reading
of scores at the right positions (never at padding)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from models.encoding import Encoder, max_length_for
from models.errors import ModelLoadError
from models.heads import (
    HeadFile,
    RewardOutput,
    aggregate_steps,
    named_dimensions,
    step_probabilities,
    weighted_score,
)
from models.inputs import Encoded, ScoreInput, Truncate
from models.revision import fingerprint
from models.spec import ModelKind, Pooling, RewardSpec, load_spec

hf_logging.disable_progress_bar()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: ModelKind
    revision: str
    max_length: int
    architecture: str
    dimensions: list[str] | None
    step_aggregate: str | None
    device: str
    dtype: str


def resolve_dir(reference: str, base: Path) -> Path:
    """A directory named by a path (relative to `base`) or by 'package:<pkg>/<subdir>',
    so a model shipped inside a Python package is found wherever it is installed."""
    if reference.startswith("package:"):
        package, _, subdir = reference.removeprefix("package:").partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"python package {package!r} is not installed")
        return Path(list(found.submodule_search_locations)[0]) / subdir
    return (base / reference).resolve()


class RewardModel:
    def __init__(self, name: str, spec: RewardSpec, model, tokenizer, head: HeadFile | None,
                 revision: str, device: str, dtype: str):
        self.name = name
        self.spec = spec
        self.model = model
        self.head = head
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = dtype
        config = model.config
        self.is_encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        self.pooling = spec.pooling or (Pooling.cls if self.is_encoder else Pooling.last)
        self.encoder = Encoder(tokenizer, spec, max_length_for(spec, config, tokenizer), config.vocab_size)
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self.step_tag_ids = None
        if spec.process and spec.process.convention == "step_tag" and head is None:
            self.step_tag_ids = [self.encoder.token_id(spec.process.bad_token), self.encoder.token_id(spec.process.good_token)]
        self._check_head_width()

    # ---- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, name: str, path: str | Path, spec: dict | None = None, device: str = "cpu",
             dtype: str = "float32") -> RewardModel:
        model_dir = Path(path).resolve()
        reward_spec = load_spec(model_dir, spec)
        backbone_dir = resolve_dir(reward_spec.backbone, model_dir) if reward_spec.backbone else model_dir
        if not any(backbone_dir.glob("*.safetensors")):
            raise ModelLoadError(
                f"{backbone_dir} has no safetensors weights; pickle checkpoints (.bin/.pt) are refused"
            )
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        remote = reward_spec.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(backbone_dir, trust_remote_code=remote)
        model = _load_backbone(backbone_dir, reward_spec, DTYPES[dtype], remote).to(device).eval()
        head = None
        if reward_spec.head_file:
            head = HeadFile.load(model_dir / reward_spec.head_file).to(device=device, dtype=DTYPES[dtype]).eval()
        revision = fingerprint([backbone_dir, model_dir], reward_spec.canonical_json())
        return cls(name, reward_spec, model, tokenizer, head, revision, device, dtype)

    def _check_head_width(self) -> None:
        if self.step_tag_ids is not None:  # read from the LM head's candidate tokens
            return
        spec = self.spec
        allowed = {
            ModelKind.scalar: (1,),
            ModelKind.process: (1, 2),
            ModelKind.multi_objective: (len(spec.multi_objective.dimensions),) if spec.multi_objective else (),
        }[spec.kind]
        width = self.head.reward.out_features if self.head else self.model.config.num_labels
        if width not in allowed:
            raise ModelLoadError(f"{self.name}: head has {width} outputs; a {spec.kind.value} model needs {allowed}")

    # ---- public ------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        spec = self.spec
        return ModelInfo(
            name=self.name,
            kind=spec.kind,
            revision=self.revision,
            max_length=self.encoder.max_length,
            architecture=type(self.model).__name__,
            dimensions=list(spec.multi_objective.dimensions) if spec.multi_objective else None,
            step_aggregate=spec.process.aggregate.value if spec.process else None,
            device=str(self.device),
            dtype=self.dtype,
        )

    def encode(self, item: ScoreInput, truncate: Truncate | None = None) -> Encoded:
        return self.encoder.encode(item, truncate)

    def score(self, items: list[ScoreInput], truncate: Truncate | None = None) -> list[RewardOutput]:
        """Encode and score in one batch: the unbatched reference when given one item."""
        return self.forward([self.encode(item, truncate) for item in items])

    @torch.inference_mode()
    def forward(self, batch: list[Encoded]) -> list[RewardOutput]:
        ids, mask, types = self._pad(batch)
        kind = self.spec.kind
        if kind == ModelKind.process:
            step_logits = self._step_logits(batch, ids, mask, types)
            return [self._process_output(enc, logits) for enc, logits in zip(batch, step_logits)]
        if self.head is not None:
            hidden = self._hidden(ids, mask, types)
            values = self.head.reward(self._pool(hidden, mask))
        else:
            values = self._sequence_logits(ids, mask, types)
        gating = None
        if self.head is not None and self.head.gating is not None:
            prompt_end = torch.tensor([enc.prompt_length - 1 for enc in batch], device=self.device)
            weights = self.head.gate(hidden[torch.arange(len(batch), device=self.device), prompt_end])
            gating = (weights.float(), self.head.gated_score(values, weights).float())
        return self._sequence_outputs(batch, values.float(), gating)

    @torch.inference_mode()
    def head_features(self, batch: list[Encoded]) -> torch.Tensor:
        """What a head file's reward MLP reads: pooled sequence states, or, for process
        models, the states at every step marker (rows in batch order). Training a head
        on these guarantees it sees exactly what serving feeds it."""
        ids, mask, types = self._pad(batch)
        hidden = self._hidden(ids, mask, types)
        if self.spec.kind == ModelKind.process:
            return hidden[self._marker_index(batch)]
        return self._pool(hidden, mask)

    # ---- forward pieces ----------------------------------------------------------

    def _marker_index(self, batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([r for r, enc in enumerate(batch) for _ in enc.marker_positions], device=self.device)
        cols = torch.tensor([p for enc in batch for p in enc.marker_positions], device=self.device)
        return rows, cols

    def _pad(self, batch: list[Encoded]):
        width = max(enc.num_tokens for enc in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long) if self.is_encoder else None
        for row, enc in enumerate(batch):
            n = enc.num_tokens
            ids[row, :n] = torch.tensor(enc.input_ids)
            mask[row, :n] = 1
            if types is not None and enc.token_type_ids:
                types[row, :n] = torch.tensor(enc.token_type_ids)
        extra = {"token_type_ids": types.to(self.device)} if types is not None else {}
        return ids.to(self.device), mask.to(self.device), extra

    def _base(self):
        return self.model if self.head is not None else self.model.base_model

    def _hidden(self, ids, mask, types) -> torch.Tensor:
        return self._base()(input_ids=ids, attention_mask=mask, **types).last_hidden_state

    def _last_index(self, mask) -> torch.Tensor:
        return mask.sum(dim=1) - 1

    def _pool(self, hidden, mask) -> torch.Tensor:
        if self.pooling == Pooling.cls:
            return hidden[:, 0]
        if self.pooling == Pooling.mean:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), self._last_index(mask)]

    def _sequence_logits(self, ids, mask, types) -> torch.Tensor:
        """A checkpoint's own classification head. Encoders pool [CLS] through their own
        pooler; decoders are read at the last real token, found from the mask rather than
        from pad ids (a pad id that equals EOS would otherwise move the read position)."""
        if self.is_encoder:
            return self.model(input_ids=ids, attention_mask=mask, **types).logits
        hidden = self._hidden(ids, mask, types)
        return self.model.score(self._pool(hidden, mask))

    def _step_logits(self, batch, ids, mask, types) -> list[torch.Tensor]:
        at_markers = self._marker_index(batch)
        if self.head is not None:
            logits = self.head.reward(self._hidden(ids, mask, types)[at_markers])
        elif self.step_tag_ids is not None:
            hidden = self._hidden(ids, mask, types)[at_markers]
            lm_head = self.model.get_output_embeddings()
            candidates = lm_head.weight[self.step_tag_ids]
            logits = hidden @ candidates.T
            if getattr(lm_head, "bias", None) is not None:
                logits = logits + lm_head.bias[self.step_tag_ids]
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, **types).logits[at_markers]
        return list(logits.float().split([len(enc.marker_positions) for enc in batch]))

    # ---- outputs -----------------------------------------------------------------

    def _process_output(self, enc: Encoded, logits: torch.Tensor) -> RewardOutput:
        rewards = step_probabilities(logits).tolist()
        return RewardOutput(
            score=aggregate_steps(rewards, self.spec.process.aggregate),
            step_rewards=rewards,
            num_tokens=enc.num_tokens,
            truncated=enc.truncated,
        )

    def _sequence_outputs(self, batch, values: torch.Tensor, gating) -> list[RewardOutput]:
        outputs = []
        mo = self.spec.multi_objective
        for row, enc in enumerate(batch):
            raw = values[row].tolist()
            if mo is None:
                outputs.append(RewardOutput(score=raw[0], num_tokens=enc.num_tokens, truncated=enc.truncated))
                continue
            dims = named_dimensions(mo, raw)
            weights = gating[0][row].tolist() if gating else None
            score = gating[1][row].item() if gating else weighted_score(mo, dims)
            outputs.append(RewardOutput(score=score, dimensions=dims, gating_weights=weights,
                                        num_tokens=enc.num_tokens, truncated=enc.truncated))
        return outputs


def _load_backbone(directory: Path, spec: RewardSpec, dtype: torch.dtype, remote: bool):
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=remote)
    if spec.head_file:
        auto = AutoModel
    elif spec.kind == ModelKind.process:
        auto = AutoModelForCausalLM if spec.process.convention == "step_tag" else AutoModelForTokenClassification
    else:
        auto = AutoModelForSequenceClassification
    config = AutoConfig.from_pretrained(directory, trust_remote_code=remote)
    try:
        return auto.from_pretrained(directory, config=config, **kwargs)
    except ValueError as err:
        if remote:  # remote-code reward models often register only AutoModel
            return AutoModel.from_pretrained(directory, config=config, **kwargs)
        raise ModelLoadError(f"{directory}: cannot load as {auto.__name__}: {err}") from err
