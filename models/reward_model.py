"""A reward model loaded from disk: tokenization, a padded (or, for decoders, packed) batched
forward, items sharing a prompt computing it once (models.shared_prefix), and the reading of
scores at the right positions (never at padding)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
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

from models.encoding import Encoder, max_length_for, single_token_id
from models.engines import ONNX_FILENAME, Engine, OnnxEngine, TorchEngine
from models.graph import RewardGraph, contract_shape, input_names, output_names
from models.errors import ModelLoadError
from models.heads import (
    HeadFile,
    RewardOutput,
    aggregate_steps,
    named_dimensions,
    step_probabilities,
    weighted_score,
)
from models.inputs import Encoded, ScoreInput, StepsInput, TextPair, Truncate
from models.packing import pack, use_packing
from models.revision import fingerprint
from models.shared_prefix import PrefixSharing, use_sharing
from models.spec import ModelKind, Pooling, RewardSpec, load_spec
from models.triton_engine import TritonEngine, TritonTarget

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
    """Tokenization, padding and the reading of outputs around an engine: the torch graph
    itself, or the same graph exported to ONNX (see models.engines)."""

    def __init__(self, name: str, spec: RewardSpec, config, tokenizer, engine: Engine, revision: str,
                 device: str, dtype: str, packed: bool = False, prefix_sharing: PrefixSharing | None = None):
        self.name = name
        self.spec = spec
        self.config = config
        self.engine = engine
        self.revision = revision
        self.device = torch.device(device)
        self.dtype = dtype
        self.packed = packed  # forwards run the batch as one row (models.packing), not padded
        self.prefix_sharing = prefix_sharing  # groups with a common prefix run it once (models.shared_prefix)
        self.is_encoder = is_encoder_config(config)
        self.encoder = Encoder(tokenizer, spec, max_length_for(spec, config, tokenizer), config.vocab_size,
                               self.is_encoder)
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        self._check_head_width()

    # ---- loading -----------------------------------------------------------------

    @classmethod
    def load(cls, name: str, path: str | Path, spec: dict | None = None, device: str = "cpu",
             dtype: str = "float32", backend: str = "torch", onnx_file: str | Path | None = None,
             triton: TritonTarget | None = None, packed: bool | None = None,
             share_prefix: bool | None = None) -> RewardModel:
        """`backend` 'torch' loads the safetensors weights; 'onnxruntime' runs `onnx_file`
        (default: reward.onnx in the model directory, written by `rewardserve export-onnx`);
        'triton' sends batches to the `triton` server running that file. Only the torch
        backend reads weights; the others need the directory's tokenizer, config and spec.
        `packed`: run batches packed, padded, or (None) packed where supported (use_packing).
        `share_prefix`: items of a batch with a common prefix compute it once: always, never,
        or (None) where supported (models.shared_prefix.use_sharing)."""
        model_dir = Path(path).resolve()
        reward_spec = load_spec(model_dir, spec)
        backbone_dir = resolve_dir(reward_spec.backbone, model_dir) if reward_spec.backbone else model_dir
        if backend == "torch" and not any(backbone_dir.glob("*.safetensors")):
            raise ModelLoadError(
                f"{backbone_dir} has no safetensors weights; pickle checkpoints (.bin/.pt) are refused"
            )
        if dtype not in DTYPES:
            raise ModelLoadError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        remote = reward_spec.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(backbone_dir, trust_remote_code=remote)
        config = AutoConfig.from_pretrained(backbone_dir, trust_remote_code=remote)
        extra_spec, extra_files, graph = "", [], None
        if backend == "torch":
            graph = build_graph(backbone_dir, model_dir, reward_spec, config, tokenizer, device, dtype)
            engine = TorchEngine(graph)
        elif backend == "onnxruntime":
            onnx_path = Path(onnx_file) if onnx_file else model_dir / ONNX_FILENAME
            if not onnx_path.is_file():
                raise ModelLoadError(f"{onnx_path} does not exist: run `rewardserve export-onnx` first")
            engine = OnnxEngine(onnx_path, device)
            extra_spec, extra_files = f"onnx:{onnx_path.name}", [onnx_path]
        elif backend == "triton":
            if triton is None:
                raise ModelLoadError("backend 'triton' needs the server to send batches to (triton_url)")
            gated = bool(reward_spec.multi_objective and reward_spec.multi_objective.aggregate == "gating")
            engine = TritonEngine(triton, input_names(is_encoder_config(config), gated),
                                  output_names(reward_spec, gated))
            extra_spec = engine.identity
        else:
            raise ModelLoadError(f"backend must be 'torch', 'onnxruntime' or 'triton', not {backend!r}")
        packs, sharing = use_packing(name, packed, graph), use_sharing(name, share_prefix, graph)
        revision = fingerprint([backbone_dir, model_dir], reward_spec.canonical_json() + extra_spec, extra_files)
        return cls(name, reward_spec, config, tokenizer, engine, revision, device, dtype, packs, sharing)

    def _check_head_width(self) -> None:
        width = self.engine.output_width
        if width is None:  # a step-tag LM, read at its good/bad candidate tokens
            return
        spec = self.spec
        allowed = {
            ModelKind.scalar: (1,),
            ModelKind.process: (1, 2),
            ModelKind.multi_objective: (len(spec.multi_objective.dimensions),) if spec.multi_objective else (),
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
            architecture=self.engine.architecture,
            dimensions=list(spec.multi_objective.dimensions) if spec.multi_objective else None,
            step_aggregate=spec.process.aggregate.value if spec.process else None,
            device=str(self.device),
            dtype=self.dtype,
        )

    @functools.cached_property
    def graph_contract(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """The graph's inputs and outputs ({name: shape}, in graph order) as a model server
        declares them: -1 on dynamic axes, fixed sizes read off one warm-up forward, so they
        are what this engine really gives, whichever engine it is."""
        inputs = self.model_inputs([self.encode(item, truncate="right") for item in warmup_inputs(self.spec.kind)])
        outputs = self.engine(inputs)
        return ({name: contract_shape(name, tuple(t.shape)) for name, t in inputs.items()},
                {name: contract_shape(name, tuple(t.shape)) for name, t in outputs.items()})

    def encode(self, item: ScoreInput, truncate: Truncate | None = None) -> Encoded:
        return self.encoder.encode(item, truncate)

    def score(self, items: list[ScoreInput], truncate: Truncate | None = None) -> list[RewardOutput]:
        """Encode and score in one batch: the unbatched reference when given one item."""
        return self.forward([self.encode(item, truncate) for item in items])

    def forward(self, batch: list[Encoded]) -> list[RewardOutput]:
        return self.prepare(batch)()

    def prepare(self, batch: list[Encoded]) -> Callable[[], list[RewardOutput]]:
        """The batch's inputs built (prefix groups found, rows padded or packed), returned as
        the forward that runs them: a server builds the next batch while this one runs."""
        if self.prefix_sharing is not None and len(batch) > 1:
            return self.prefix_sharing.prepare(self, batch)
        return self.prepare_unshared(batch)

    def forward_unshared(self, batch: list[Encoded]) -> list[RewardOutput]:
        return self.prepare_unshared(batch)()

    def prepare_unshared(self, batch: list[Encoded]) -> Callable[[], list[RewardOutput]]:
        """The batch as one forward, packed or padded."""
        if self.packed:
            inputs = pack(batch, self.encoder.gates_on_prompt, self.spec.kind == ModelKind.process)
            return lambda: self.read_outputs(batch, self.engine.packed(inputs), at_markers=True)
        inputs = self.model_inputs(batch)
        return lambda: self.read_outputs(batch, self.engine(inputs), at_markers=False)

    def read_outputs(self, batch: list[Encoded], tensors: dict[str, torch.Tensor], at_markers: bool):
        """The engine's outputs as one RewardOutput per item; `at_markers`: step logits are
        given at the step markers only (packed, shared prefix), not at every position."""
        if self.spec.kind == ModelKind.process:
            logits = tensors["step_logits"] if at_markers else tensors["step_logits"][self.marker_index(batch)]
            per_item = logits.split([len(enc.marker_positions) for enc in batch])
            return [self._process_output(enc, item_logits) for enc, item_logits in zip(batch, per_item)]
        gating = None
        if "gating_weights" in tensors:
            gating = (tensors["gating_weights"].float(), tensors["gated_score"].float())
        return self._sequence_outputs(batch, tensors["values"].float(), gating)

    def model_inputs(self, batch: list[Encoded]) -> dict[str, torch.Tensor]:
        """The padded batch as the engine's named inputs: right padding (real tokens never
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
        on these guarantees it sees exactly what serving feeds it. Torch engine only."""
        graph = self.engine.graph
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
    if kind == ModelKind.process:
        return [StepsInput("1 + 1 = ?", ("2",) * repeat),
                StepsInput("What is 3 + 4?", ("3 + 4 = 7.", "The answer is 7.") * repeat)]
    return [TextPair("Hi", " ".join(["Hello!"] * repeat)),
            TextPair("What is the capital of France?", " ".join(["Paris is the capital of France."] * repeat))]


def is_encoder_config(config) -> bool:
    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def build_graph(backbone_dir: Path, model_dir: Path, spec: RewardSpec, config, tokenizer, device: str,
                dtype: str) -> RewardGraph:
    """The torch graph of a model directory: backbone weights, our head file if any."""
    model = _load_backbone(backbone_dir, spec, config, DTYPES[dtype], device).to(device).eval()
    head = None
    if spec.head_file:
        head = HeadFile.load(model_dir / spec.head_file).to(device=device, dtype=DTYPES[dtype]).eval()
    step_tag_ids = None
    if spec.process and spec.process.convention == "step_tag" and head is None:
        p = spec.process
        step_tag_ids = [single_token_id(tokenizer, p.bad_token, "process.bad_token"),
                        single_token_id(tokenizer, p.good_token, "process.good_token")]
    encoder = is_encoder_config(config)
    pooling = spec.pooling or default_pooling(spec, encoder)
    pad_token_id = config.get_text_config().pad_token_id
    graph = RewardGraph(model, head, spec, encoder, pooling, step_tag_ids, pad_token_id).eval()
    _check_readable(graph, spec)
    return graph


def default_pooling(spec: RewardSpec, is_encoder: bool) -> Pooling:
    """[CLS] for encoders; for decoders transformers' own rule when the checkpoint's
    classification head is read, else the last real token."""
    if is_encoder:
        return Pooling.cls
    if spec.head_file or spec.reward_logit_index is not None:
        return Pooling.last
    return Pooling.last_non_pad


def _check_readable(graph: RewardGraph, spec: RewardSpec) -> None:
    """The loaded module has the part the graph reads scores from (a remote-code class may
    have none of the standard ones)."""
    model = graph.model
    token_ids = graph.step_tag_ids or ([spec.reward_logit_index] if spec.reward_logit_index is not None else None)
    if token_ids is not None:
        lm_head = model.get_output_embeddings()
        rows = lm_head.weight.shape[0] if lm_head is not None else 0
        if max(token_ids) >= rows:
            raise ModelLoadError(f"{type(model).__name__}: no LM head row {max(token_ids)} to read a logit from")
    elif graph.head is None and not graph.is_encoder and spec.kind != ModelKind.process:
        if not isinstance(getattr(model, "score", None), torch.nn.Module):
            raise ModelLoadError(
                f"{type(model).__name__} has no `score` layer to read a sequence score from; for a custom "
                "(remote-code) head, convert it with `rewardserve convert` or give a head_file")


def _attention(spec: RewardSpec, dtype: torch.dtype, device: str) -> dict:
    """flash-attention 2 where it is installed and runs (transformers' own classes on a CUDA
    device in half precision): its variable-length kernels let packed batches compute real
    tokens only. Otherwise transformers' default (sdpa)."""
    usable = (str(device).startswith("cuda") and dtype in (torch.bfloat16, torch.float16)
              and not spec.trust_remote_code and importlib.util.find_spec("flash_attn") is not None)
    return {"attn_implementation": "flash_attention_2"} if usable else {}


def _load_backbone(directory: Path, spec: RewardSpec, config, dtype: torch.dtype, device: str):
    """The checkpoint as the transformers class the spec implies, every tensor accounted
    for: a missing, unexpected or mis-shaped weight is a load error naming it, never a
    randomly initialised layer (tensors left unread on purpose are named in unused_weights)."""
    remote = spec.trust_remote_code
    # mismatched shapes are reported in the loading info (and refused below), not raised
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=remote, output_loading_info=True,
                  ignore_mismatched_sizes=True, **_attention(spec, dtype, device))
    if spec.head_file:
        auto = AutoModel
    elif spec.kind == ModelKind.process:
        auto = AutoModelForCausalLM if spec.process.convention == "step_tag" else AutoModelForTokenClassification
    elif spec.reward_logit_index is not None:
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
    _check_loading_info(directory, info, spec.unused_weights)
    return model


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
