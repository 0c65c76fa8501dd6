"""A reward model loaded from disk: tokenization, a padded (or, for decoders, packed) batched
forward, items sharing a prompt computing it once (models.shared_prefix), and the reading of
scores at the right positions (never at padding)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import AutoConfig, AutoTokenizer

from models.backends import load_backend
from models.backends.base import Backend, ModelSource
from models.backends.config import BackendConfig, TorchConfig
from models.determinism import batch_invariant
from models.encoding import Encoder, max_length_for
from models.errors import ModelLoadError
from models.graph import RewardGraph, contract_shape
from models.heads import (
    RewardOutput,
    aggregate_steps,
    named_dimensions,
    step_probabilities,
    weighted_score,
)
from models.implicit import check_same_tokenizer, implicit_output
from models.inputs import Encoded, PairInput, ScoreInput, StepsInput, TextPair, Truncate
from models.loading import DTYPES, is_encoder_config
from models.packing import pack
from models.pair_encoding import PairEncoder
from models.revision import fingerprint
from models.shared_prefix import PrefixSharing
from models.spec import ModelKind, RewardSpec, load_spec

T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: ModelKind
    revision: str
    max_length: int
    architecture: str
    dimensions: list[str] | None
    step_aggregate: str | None
    device: str  # as configured ('cpu', 'cuda:1'); with a device_map its devices ('cuda:0,cuda:1', 'cpu,disk')
    dtype: str
    adapters: dict[str, str] | None = None  # LoRA adapters: name -> revision (sha256 of its files)


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
    """Tokenization, padding and the reading of outputs around a compute backend
    (models.backends): the torch graph itself, or the same graph exported to ONNX and run
    in ONNX Runtime or on a Triton server."""

    def __init__(self, name: str, spec: RewardSpec, config, tokenizer, backend: Backend, revision: str,
                 dtype: str, packed: bool = False, prefix_sharing: PrefixSharing | None = None):
        self.name = name
        self.spec = spec
        self.config = config
        self.backend = backend
        self.revision = revision
        self.device = backend.device  # where inputs go
        self.placement = backend.placement  # where the model is (devices of a device_map)
        self.dtype = dtype
        self.packed = packed  # forwards run the batch as one row (models.packing), not padded
        self.prefix_sharing = prefix_sharing  # groups with a common prefix run it once (models.shared_prefix)
        self.is_encoder = is_encoder_config(config)
        encoder = PairEncoder if spec.kind == ModelKind.pairwise else Encoder
        self.encoder = encoder(tokenizer, spec, max_length_for(spec, config, tokenizer), config.vocab_size,
                               self.is_encoder)
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self._check_head_width()

    # ---- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, name: str, path: str | Path, spec: dict | None = None, device: str = "cpu",
             dtype: str = "float32", backend: BackendConfig | None = None, packed: bool | None = None,
             share_prefix: bool | None = None, adapters: dict[str, str | Path] | None = None) -> RewardModel:
        """`backend` (default: torch on `device`) runs the graph (models.backends); every
        backend needs the directory's tokenizer, config and spec, only torch its weights.
        `adapters`: LoRA adapters (name -> directory) loaded over it (models.adapters).
        `packed`: run batches packed, padded, or (None) packed where the backend does by
        default (models.packing). `share_prefix`: items of a batch with a common prefix
        compute it once: always, never, or (None) where supported (models.shared_prefix)."""
        model_dir = Path(path).resolve()
        reward_spec = load_spec(model_dir, spec)
        backbone_dir = resolve_dir(reward_spec.backbone, model_dir) if reward_spec.backbone else model_dir
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        if adapters and not isinstance(backend or TorchConfig(), TorchConfig):
            raise ModelLoadError(f"{name}: adapters are served by the torch backend only")
        remote = reward_spec.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(backbone_dir, trust_remote_code=remote)
        config = AutoConfig.from_pretrained(backbone_dir, trust_remote_code=remote)
        reference = reward_spec.implicit.reference if reward_spec.implicit else None
        reference_dir = resolve_dir(reference, model_dir) if reference else None
        if reference_dir is not None:
            check_same_tokenizer(tokenizer, reference_dir)
        source = ModelSource(name, model_dir, backbone_dir, reward_spec, config, tokenizer, device, dtype,
                             reference_dir, {n: Path(d).resolve() for n, d in (adapters or {}).items()})
        compute = load_backend(backend or TorchConfig(), source)
        packs = compute.packing.chosen(packed, f"{name}: packed: true, but this model cannot run packed")
        shares = compute.prefix_sharing.chosen(
            share_prefix, f"{name}: share_prefix: true, but this model cannot share a prompt's forward")
        own_files = [
            model_dir / f for f in (reward_spec.head_file, reward_spec.backbone_weights) if f
        ]  # may lie elsewhere
        revision = fingerprint([backbone_dir, model_dir, *filter(None, [reference_dir])],
                               reward_spec.canonical_json() + compute.identity,
                               [*own_files, *compute.files])
        return cls(name, reward_spec, config, tokenizer, compute, revision, dtype, packs,
                   PrefixSharing() if shares else None)

    def _check_head_width(self) -> None:
        width = self.backend.output_width
        if width is None:  # a step-tag LM, read at its good/bad candidate tokens; an implicit model
            return
        spec = self.spec
        allowed = {
            ModelKind.scalar: (1,),
            ModelKind.process: (1, 2),
            ModelKind.multi_objective: (len(spec.multi_objective.dimensions),) if spec.multi_objective else (),
            ModelKind.pairwise: (1,),
        }[spec.kind]
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
            architecture=self.backend.architecture,
            dimensions=list(spec.multi_objective.dimensions) if spec.multi_objective else None,
            step_aggregate=spec.process.aggregate.value if spec.process else None,
            device=self.placement,
            dtype=self.dtype,
            adapters=dict(self.backend.adapters.revisions) if self.backend.adapters else None,
        )

    @property
    def base_scores(self) -> bool:
        """Whether the base model scores without an adapter: not where its head comes from
        the adapters only (models.adapters)."""
        return self.backend.adapters is None or self.backend.adapters.base_scores

    @property
    def torch_graph(self) -> RewardGraph:
        """The torch module itself, for what reads inside it (head features, ONNX export)."""
        if self.backend.graph is None:
            raise ModelLoadError(f"{self.name} runs on {self.backend.architecture}; this needs the torch backend")
        return self.backend.graph

    @functools.cached_property
    def graph_contract(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The graph's inputs and outputs ({name: shape}, in graph order) as a model server
        declares them: -1 on dynamic axes, fixed sizes read off one warm-up forward, so they
        are what this backend really gives, whichever backend it is."""
        inputs = self.model_inputs([self.encode(item, truncate="right") for item in warmup_inputs(self.spec.kind)])
        outputs = self.backend(inputs)
        return ({name: contract_shape(name, tuple(t.shape)) for name, t in inputs.items()},
                {name: contract_shape(name, tuple(t.shape)) for name, t in outputs.items()})

    def encode(self, item: ScoreInput, truncate: Truncate | None = None, keep: int | None = None) -> Encoded:
        return self.encoder.encode(item, truncate, keep)

    def score(self, items: list[ScoreInput], truncate: Truncate | None = None) -> list[RewardOutput]:
        """Encode and score in one batch: the unbatched reference when given one item."""
        return self.forward([self.encode(item, truncate) for item in items])

    def forward(self, batch: list[Encoded]) -> list[RewardOutput]:
        return self.prepare(batch)()

    def forward_clock(self) -> float:
        """The clock a forward's cost is read by, on the thread running it. On the host's
        cores, that thread's CPU time: while a burst arrives, parsing and tokenizing it take
        cores from the forward and stretch it in wall time (2-3x), for as long as the burst
        lasts only; CPU time stays the forward's own work. On an accelerator or a remote
        server the thread waits, so there the wall clock. The backend knows which."""
        return self.backend.forward_clock()

    def prepare(self, batch: list[Encoded]) -> Callable[[], list[RewardOutput]]:
        """The batch's inputs built (prefix groups found, rows padded or packed), returned as
        the forward that runs them: a server builds the next batch while this one runs."""
        if self.prefix_sharing is not None and len(batch) > 1:
            return self._on_adapter(batch, self.prefix_sharing.prepare(self, batch))
        return self._on_adapter(batch, self.prepare_unshared(batch))

    def _on_adapter(self, batch: list[Encoded], forward: Callable[[], T]) -> Callable[[], T]:
        """`forward`, run with its items' adapter on (the base's weights are the rest state).
        The adapter is switched when the forward runs, on the forward thread, not while it is
        prepared beside another forward."""
        adapter = batch[0].adapter
        if any(enc.adapter != adapter for enc in batch):
            raise ValueError("a batch's items are scored by one adapter")
        if adapter is None:
            return forward
        if self.backend.adapters is None or adapter not in self.backend.adapters.revisions:
            raise ValueError(f"{self.name} has no adapter {adapter!r}")

        def run() -> T:
            with self.backend.adapters.active(adapter):
                return forward()

        return run

    def prepare_alone(self, batch: list[Encoded]) -> Callable[[], list[RewardOutput]]:
        """One item's forward on its own (no batch-mates, padding or shared prefix): the same
        shapes every time, so the same bits whatever else is queued; on CUDA under the
        switches that keeps its kernels deterministic (models.determinism)."""
        if len(batch) != 1:
            raise ValueError(f"an item scored alone is a batch of one, not {len(batch)}")
        forward = self._on_adapter(batch, self.prepare_unshared(batch))

        def run() -> list[RewardOutput]:
            with batch_invariant(self.device):
                return forward()

        return run

    def forward_unshared(self, batch: list[Encoded]) -> list[RewardOutput]:
        return self._on_adapter(batch, self.prepare_unshared(batch))()

    def prepare_unshared(self, batch: list[Encoded]) -> Callable[[], list[RewardOutput]]:
        """The batch as one forward, packed or padded."""
        if self.packed:
            inputs = pack(batch, self.encoder.gates_on_prompt, self.spec.kind == ModelKind.process)
            if self.spec.kind == ModelKind.implicit:  # one row: item i's log-ratios from where it starts
                return lambda: self._implicit_outputs(batch, self.backend.packed(inputs), [0] * len(batch),
                                                      inputs["seq_starts"].tolist())
            return lambda: self.read_outputs(batch, self.backend.packed(inputs), at_markers=True)
        inputs = self.model_inputs(batch)
        return lambda: self.read_outputs(batch, self.backend(inputs), at_markers=False)

    def read_outputs(self, batch: list[Encoded], tensors: dict[str, torch.Tensor], at_markers: bool):
        """The backend's outputs for right-padded rows (the padded batch, a shared-prefix group)
        as one RewardOutput per item; `at_markers`: step logits are given at the step markers
        only (packed, shared prefix), not at every position."""
        if self.spec.kind == ModelKind.implicit:
            return self._implicit_outputs(batch, tensors, range(len(batch)), [0] * len(batch))
        if self.spec.kind == ModelKind.process:
            logits = tensors["step_logits"] if at_markers else tensors["step_logits"][self.marker_index(batch)]
            per_item = logits.split([len(enc.marker_positions) for enc in batch])
            return [self._process_output(enc, item_logits) for enc, item_logits in zip(batch, per_item)]
        gating = None
        if "gating_weights" in tensors:
            gating = (tensors["gating_weights"].float(), tensors["gated_score"].float())
        return self._sequence_outputs(batch, tensors["values"].float(), gating)

    def model_inputs(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        """The padded batch as the backend's named inputs: right padding (real tokens never
        attend to padding, and every row's positions start at 0), segment ids for encoders,
        the position gating heads read."""
        width = max(enc.num_tokens for enc in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        types = torch.zeros((len(batch), width), dtype=torch.long)
        for row, enc in enumerate(batch):
            n = enc.num_tokens
            ids[row, :n] = torch.tensor(enc.input_ids)
            mask[row, :n] = 1
            if enc.token_type_ids:
                types[row, :n] = torch.tensor(enc.token_type_ids)
        named = {"input_ids": ids, "attention_mask": mask}
        if self.is_encoder:
            named["token_type_ids"] = types
        if self.encoder.gates_on_prompt:
            named["prompt_end"] = torch.tensor([enc.gate_position for enc in batch], dtype=torch.long)
        return named

    @torch.inference_mode()
    def head_features(self, batch: list[Encoded]) -> torch.Tensor:
        """What a head file's reward MLP reads: pooled sequence states, or, for process
        models, the states at every step marker (rows in batch order). Training a head
        on these guarantees it sees exactly what serving feeds it."""
        graph = self.torch_graph
        inputs = {k: v.to(self.device) for k, v in self.model_inputs(batch).items()}
        backbone = {k: v for k, v in inputs.items() if k in ("attention_mask", "token_type_ids")}
        hidden = graph.hidden(inputs["input_ids"], backbone)
        if self.spec.kind == ModelKind.process:
            return hidden[self.marker_index(batch)]
        return graph.pool(hidden, inputs["attention_mask"], inputs["input_ids"])

    # ---- outputs -----------------------------------------------------------------

    def marker_index(self, batch: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([r for r, enc in enumerate(batch) for _ in enc.marker_positions], dtype=torch.long)
        cols = torch.tensor([p for enc in batch for p in enc.marker_positions], dtype=torch.long)
        return rows, cols

    def _implicit_outputs(self, batch: list[Encoded], tensors: dict[str, torch.Tensor], rows, starts):
        """Item i's log-ratios are row rows[i] of the output from offset starts[i] on."""
        logratios = tensors["token_logratios"]
        return [implicit_output(enc, logratios[row, start:start + enc.num_tokens], self.spec.implicit)
                for enc, row, start in zip(batch, rows, starts)]

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


def warmup_inputs(kind: ModelKind, repeat: int = 1) -> list[ScoreInput]:
    """Two inputs of unequal lengths, small unless their answers `repeat`: for warm-up
    forwards and export tracing."""
    if kind == ModelKind.pairwise:
        return [PairInput((("user", "Hi"),), " ".join(["Hello!"] * repeat), "Hey."),
                PairInput((("user", "What is the capital of France?"),),
                          " ".join(["Paris is the capital of France."] * repeat), "Lyon.")]
    if kind == ModelKind.process:
        return [StepsInput("1 + 1 = ?", ("2",) * repeat),
                StepsInput("What is 3 + 4?", ("3 + 4 = 7.", "The answer is 7.") * repeat)]
    return [TextPair("Hi", " ".join(["Hello!"] * repeat)),
            TextPair("What is the capital of France?", " ".join(["Paris is the capital of France."] * repeat))]
