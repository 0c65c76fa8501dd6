"""The reward spec: the small file that says what kind of reward model a directory holds
and how to read a score out of it.

A model directory in Hugging Face format (config.json, safetensors, tokenizer) becomes a
reward model once it has a `reward_spec.yaml` beside it, or a spec given inline in the
server config. Without either, a single-label `*ForSequenceClassification` is taken as
a scalar reward model, which is what most published reward models are, and so is a
checkpoint in OpenRLHF's value-head layout (models.openrlhf); the mean and standard
deviation OpenRLHF's training writes into config.json become its reference statistics.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from string import Formatter
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.errors import ModelLoadError
from models.openrlhf import reward_moments, value_head_name
from service.protocol.enums import ModelKind, PairwiseMode, StepAggregate

SPEC_FILENAME = "reward_spec.yaml"
SPEC_DOCS = "models/README.md#reward-spec-reward_specyaml"


class Pooling(str, Enum):
    """Where a sequence-level score is read.

    `last_non_pad`: the last token that is not the model config's pad token, the rule of
    transformers' own *ForSequenceClassification heads (so of the models trained with
    them): with pad = `<|eot_id|>` that is the token before a closing `<|eot_id|>`.
    `last`: the last real token. `cls`: the first token (encoders' [CLS]). `mean`: the
    mean over real tokens (sentence encoders)."""

    last_non_pad = "last_non_pad"
    last = "last"
    cls = "cls"
    mean = "mean"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Affine(_Strict):
    scale: float = 1.0
    shift: float = 0.0


class ProcessSpec(_Strict):
    """How step rewards are read.

    `separator`: a token placed after each step; a [bad, good] classifier is read at it
    (Qwen2.5-Math-PRM: `<extra_0>`). `step_tag`: a causal LM is read at a tag token,
    restricted to a good and a bad candidate token (Math-Shepherd: `ки`, `+`, `-`).
    """

    convention: Literal["separator", "step_tag"]
    marker: str = Field(description="token inserted after each step: the separator or the step tag")
    good_token: str | None = None
    bad_token: str | None = None
    step_prefix: str = Field("", description="text put before each step's text")
    step_suffix: str = Field("", description="text put between a step's text and its marker")
    after_marker: str = Field("", description="text put between a marker and the next step, e.g. a newline")
    aggregate: StepAggregate = StepAggregate.min
    threshold: float = Field(0.5, gt=0, lt=1, description=(
        "the step reward below which a step is called wrong (the default of /v1/steps' `first_below`): "
        "calibrated per model, since a model's step rewards need not centre on 0.5; scores do not depend on it"))

    @model_validator(mode="after")
    def _tokens_for_step_tag(self) -> ProcessSpec:
        if self.convention == "step_tag" and not (self.good_token and self.bad_token):
            raise ValueError("process.convention 'step_tag' needs good_token and bad_token")
        return self


JUDGE_TEMPLATE = (
    "Here is a request and a response to it.\n\n[Request]\n{prompt}\n\n[Response]\n{response}\n\n"
    "Is the response a helpful, correct and harmless answer to the request? Answer {labels[0]} or {labels[1]}."
)
JUDGE_FIELDS = frozenset({"prompt", "response", "labels[0]", "labels[1]"})


class LabelTokensSpec(_Strict):
    """A causal LM read as a judge (a yes/no or A/B question): `template` puts an item's prompt
    and response into one question, asked as a user turn through the chat template with its
    generation prompt (the text alone without one), and the score is P(labels[0]) /
    (P(labels[0]) + P(labels[1])) from the LM head's logits where the answer would begin."""

    labels: list[str] = Field(min_length=2, max_length=2, description=(
        "the two answers, the one whose probability is the score first (e.g. [Yes, No]); each must be one token "
        "of the model's tokenizer, as the text tokenizes alone (write a leading space where the answer has one)"))
    template: str = Field(JUDGE_TEMPLATE, description=(
        "the question, in Python format syntax: {prompt}, {response}, {labels[0]}, {labels[1]}; {{ and }} for "
        "literal braces"))

    @model_validator(mode="after")
    def _labels_and_fields(self) -> LabelTokensSpec:
        if not all(self.labels) or self.labels[0] == self.labels[1]:
            raise ValueError(f"label_tokens.labels must be two different non-empty texts, not {self.labels}")
        try:
            fields = {name for _, name, _, _ in Formatter().parse(self.template) if name is not None}
        except ValueError as err:
            raise ValueError(f"label_tokens.template: {err} (write {{{{ and }}}} for literal braces)") from None
        if fields - JUDGE_FIELDS or not {"prompt", "response"} <= fields:
            raise ValueError(f"label_tokens.template must use {{prompt}} and {{response}}, and no fields but "
                             f"{sorted(JUDGE_FIELDS)}; it uses {sorted(fields)}")
        return self

    def question(self, prompt: str, response: str) -> str:
        return self.template.format(prompt=prompt, response=response, labels=self.labels)


class MultiObjectiveSpec(_Strict):
    """Named dimensions, an optional affine transform per dimension, and how they are
    combined: fixed `weights`, or `gating` (ArmoRM style, weights from the prompt)."""

    dimensions: list[str] = Field(min_length=1)
    transform: dict[str, Affine] = Field(default_factory=dict)
    aggregate: Literal["weights", "gating"] = "weights"
    weights: dict[str, float] = Field(default_factory=dict)
    gating_at: str | None = Field(
        None, description="gating: text whose last occurrence in the tokenized input marks where the gating network "
        "reads (its first token; ArmoRM: the <|eot_id|> closing the last user turn); default: the last prompt token")

    @model_validator(mode="after")
    def _names_known(self) -> MultiObjectiveSpec:
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("multi_objective.dimensions must be unique")
        for field, names in (("transform", self.transform), ("weights", self.weights)):
            unknown = set(names) - set(self.dimensions)
            if unknown:
                raise ValueError(f"multi_objective.{field} names unknown dimensions: {sorted(unknown)}")
        if self.aggregate == "weights" and not self.weights:
            raise ValueError("multi_objective.aggregate 'weights' needs multi_objective.weights")
        if self.gating_at is not None and (self.aggregate != "gating" or not self.gating_at):
            raise ValueError("multi_objective.gating_at is a non-empty text, for aggregate 'gating' only")
        return self

    def affine(self, name: str) -> Affine:
        return self.transform.get(name, Affine())


class Moments(_Strict):
    mean: float
    std: float = Field(gt=0, description="population standard deviation")


class ReferenceStats(_Strict):
    """A model's score statistics over a reference set (written by `rewardserve calibrate`),
    so requests can ask for z-scores: (value - mean) / std, per score and per dimension."""

    score: Moments
    dimensions: dict[str, Moments] = Field(default_factory=dict)
    aggregate: StepAggregate | None = Field(
        None, description="process models: the step aggregate `score` was taken with"
    )
    count: int | None = Field(None, ge=2, description="items in the reference set, where known")
    source: str = Field("", description="what the reference set was")


class ImplicitSpec(_Strict):
    """A DPO-trained policy read as a reward model (models.implicit): with a reference model,
    the reward is beta * sum over the response tokens of (log pi - log pi_ref); without one, the
    policy's own log-probabilities of the response tokens, reduced as RewardBench does."""

    reference: str | None = Field(None, description=(
        "the reference (usually the SFT model the policy was trained from): a causal LM directory, a path relative "
        "to the spec or 'package:<python package>/<subdir>', with the policy's tokenizer; null: reference-free"))
    beta: float = Field(0.1, gt=0, description="the DPO beta the policy was trained with; scales the log-ratios")
    reduction: Literal["sum", "avg", "norm"] = Field("sum", description=(
        "reference-free only: sum of the response tokens' log-probabilities, their mean, or `norm`, minus their "
        "L2 norm (RewardBench's names); with a reference the reward is always beta times the sum"))

    @model_validator(mode="after")
    def _reduction_without_reference(self) -> ImplicitSpec:
        if self.reference is not None and self.reduction != "sum":
            raise ValueError("implicit.reduction applies without a reference only; with one the reward is "
                             "beta * sum of the log-ratios")
        return self


PAIR_JUDGE_TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_a} [RESPONSE B] {response_b} \n"
PAIR_JUDGE_FIELDS = frozenset({"context", "response_a", "response_b"})
# RLHFlow's pair-preference models: the conversation written out with <turn> markers, by position
PAIR_CONTEXT_TEMPLATE = (
    "\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n {{ message['content'] }}"
    "{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n")


class PairwiseSpec(_Strict):
    """A pairwise preference model (models.pairwise): it reads a prompt and two responses, A
    and B, and says how much A beats B; every pair is read in both orders.

    `pairrm`: a DeBERTa cross-encoder in PairRM's layout (llm-blender/PairRM-hf), its head on
    the states of the source and candidate prefix tokens; P(A>B) = sigmoid(logit(A,B) -
    logit(B,A)). `ab_judge`: a causal LM asked which response is better (RLHFlow's
    pair-preference models), read at its "A" and "B" tokens; P(A>B) is the mean of P(A) with A
    first and P(A) with A second."""

    convention: Literal["pairrm", "ab_judge"]
    score_mode: PairwiseMode = Field("vs_reference", description=(
        "what /v1/score gives per item: `vs_reference`, P(response > the item's reference); `group`, the item's "
        "mean P(item > other) over the other items of the request with its prompt; a request's pairwise_mode wins"))
    source_prefix: str = Field("<|source|>", description="pairrm: the token put before the prompt")
    candidate_prefixes: list[str] = Field(["<|candidate1|>", "<|candidate2|>"], min_length=2, max_length=2,
                                          description="pairrm: the tokens put before responses A and B")
    source_max_length: int = Field(1224, gt=2, description="pairrm: tokens of the prompt part, its specials included")
    candidate_max_length: int = Field(412, gt=2, description=(
        "pairrm: tokens of each response part; a response may use what a shorter prompt leaves, up to "
        "(source_max_length + 2 * candidate_max_length - prompt tokens) // 2, as PairRM's tokenization does"))
    conversation_layout: bool = Field(True, description=(
        "pairrm: write the prompt and responses as RewardBench's PairRM does (an instruction, `USER:` turns with "
        "<Response i> slots, responses as `<Response i>: ...`); false: the prompt's text and the responses as they "
        "are (PairRM's model card)"))
    labels: list[str] = Field(["A", "B"], min_length=2, max_length=2, description=(
        "ab_judge: the answers naming the first and the second response; each one token"))
    template: str = Field(PAIR_JUDGE_TEMPLATE, description=(
        "ab_judge: the question, in Python format syntax: {context}, {response_a}, {response_b}; asked as a user "
        "turn through the chat template without a generation prompt, BOS tokens removed, as RLHFlow's code does"))
    context_template: str = Field(PAIR_CONTEXT_TEMPLATE, description=(
        "ab_judge: the Jinja chat template that writes the conversation before the responses as {context}"))

    @model_validator(mode="after")
    def _fields(self) -> PairwiseSpec:
        if len(set(self.labels)) != 2 or not all(self.labels):
            raise ValueError(f"pairwise.labels must be two different non-empty texts, not {self.labels}")
        if len(set(self.candidate_prefixes)) != 2 or self.source_prefix in self.candidate_prefixes:
            raise ValueError("pairwise.source_prefix and candidate_prefixes must be three different tokens")
        try:
            fields = {name for _, name, _, _ in Formatter().parse(self.template) if name is not None}
        except ValueError as err:
            raise ValueError(f"pairwise.template: {err} (write {{{{ and }}}} for literal braces)") from None
        if fields != PAIR_JUDGE_FIELDS:
            raise ValueError(f"pairwise.template must use exactly {sorted(PAIR_JUDGE_FIELDS)}; "
                             f"it uses {sorted(fields)}")
        return self

    @property
    def max_length(self) -> int:
        return self.source_max_length + 2 * self.candidate_max_length


class RewardSpec(_Strict):
    """Everything about a reward model that is not in its Hugging Face files."""

    kind: ModelKind
    backbone: str | None = Field(
        None,
        description="where config/weights/tokenizer live when not beside the spec: a path "
        "(relative to the spec) or 'package:<python package>/<subdir>'",
    )
    head_file: str | None = Field(
        None, description="safetensors file with our own head on the backbone's hidden states"
    )
    value_head: str | None = Field(
        None, description="scalar models in OpenRLHF's layout (models.openrlhf): the name of the linear value head "
        "the checkpoint holds beside its base model's tensors (`value_head`, or `score` in newer releases), read at "
        "the last real token as OpenRLHF reads it")
    backbone_weights: str | None = Field(
        None, description="safetensors file (relative to the spec) of fine-tuned backbone tensors that replace "
        "the backbone's own: a fine-tune shipped as the tensors it changed; each must be one the backbone has, "
        "of the same shape")
    pooling: Pooling | None = Field(
        None, description="default: cls for encoders; for decoders last_non_pad with the checkpoint's own head, "
        "last with a head file, reward_logit_index or label_tokens")
    max_length: int | None = Field(None, gt=0, description="default: the model's own limit")
    use_chat_template: bool = True
    system_prompt: str | None = Field(
        None, description="a system turn rendered before the prompt of text and steps items (and of chats that "
        "bring none) through the chat template, as a model card's usage code puts it (Qwen2.5-Math-PRM)")
    text_separator: str = Field(
        " ", description="decoders without a chat template: text put between prompt and response, which are "
        "then tokenized as one text with the tokenizer's own special tokens (one BOS)")
    reward_logit_index: int | None = Field(
        None, ge=0, description="scalar models that are causal LMs (Nemotron-70B-Reward-HF): the vocabulary "
        "index whose logit at the last token is the reward")
    label_tokens: LabelTokensSpec | None = Field(
        None, description="scalar models that are causal LMs asked a yes/no or A/B question: the score is the "
        "probability of the first answer against the second")
    unused_weights: list[str] = Field(
        default_factory=list, description="name prefixes of checkpoint tensors deliberately left unread: those a "
        "head_file holds (written by `rewardserve convert`) or ones the published model never reads (an LM head "
        "beside a reward head); any other unread tensor, and any missing one, fails the load")
    trust_remote_code: bool = False
    multi_objective: MultiObjectiveSpec | None = None
    process: ProcessSpec | None = None
    implicit: ImplicitSpec | None = None
    pairwise: PairwiseSpec | None = None
    reference_stats: ReferenceStats | None = Field(None, description="for normalize='zscore'")

    @model_validator(mode="after")
    def _kind_section(self) -> RewardSpec:
        if self.kind == ModelKind.pipeline:
            raise ValueError("kind 'pipeline' is for configured pipelines (`pipelines:`), not a model's spec")
        if self.kind == ModelKind.multi_objective and self.multi_objective is None:
            raise ValueError("kind 'multi_objective' needs a multi_objective section")
        if self.kind == ModelKind.process and self.process is None:
            raise ValueError("kind 'process' needs a process section")
        if (self.kind == ModelKind.implicit) != (self.implicit is not None):
            raise ValueError("kind 'implicit' needs an implicit section, and the section is for that kind only")
        if self.kind == ModelKind.implicit and (self.head_file or self.value_head or self.label_tokens
                                                or self.reward_logit_index is not None):
            raise ValueError("kind 'implicit' reads a causal LM's own log-probabilities: no head_file, value_head, "
                             "label_tokens or reward_logit_index")
        if (self.kind == ModelKind.pairwise) != (self.pairwise is not None):
            raise ValueError("kind 'pairwise' needs a pairwise section, and the section is for that kind only")
        if self.kind == ModelKind.pairwise and (self.head_file or self.value_head or self.label_tokens
                                                or self.reward_logit_index is not None):
            raise ValueError("kind 'pairwise' reads the checkpoint's own pair head or LM head: no head_file, "
                             "value_head, label_tokens or reward_logit_index")
        if self.multi_objective and self.multi_objective.aggregate == "gating" and not self.head_file:
            raise ValueError("multi_objective gating needs a head_file holding the gating network")
        if self.reward_logit_index is not None and (self.kind != ModelKind.scalar or self.head_file):
            raise ValueError("reward_logit_index reads a causal LM's own logits: scalar models without head_file only")
        if self.value_head is not None and (self.kind != ModelKind.scalar or self.head_file
                                            or self.reward_logit_index is not None):
            raise ValueError("value_head is the head of a scalar model: without head_file or reward_logit_index")
        if self.label_tokens is not None and (self.kind != ModelKind.scalar or self.head_file or self.value_head
                                              or self.reward_logit_index is not None):
            raise ValueError("label_tokens reads a causal LM's own logits: scalar models without head_file, "
                             "value_head or reward_logit_index only")
        stats = self.reference_stats
        if stats is not None:
            dims = set(self.multi_objective.dimensions) if self.multi_objective else set()
            if set(stats.dimensions) != dims:
                raise ValueError(f"reference_stats.dimensions must cover exactly the model's dimensions {sorted(dims)}")
            if (stats.aggregate is not None) != (self.kind == ModelKind.process):
                raise ValueError("reference_stats.aggregate is required for process models and only for them")
        return self

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        # specs without the fields added later keep the revision they had
        for later in ("reference_stats", "backbone_weights", "value_head", "label_tokens", "implicit", "pairwise"):
            if data[later] is None:
                del data[later]
        if data["process"]:  # no score depends on it
            del data["process"]["threshold"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def load_spec(model_dir: Path, inline: dict | None = None) -> RewardSpec:
    """The spec for `model_dir`: inline (from the server config) wins over the file,
    which wins over what config.json implies."""
    if inline is not None:
        return RewardSpec.model_validate(inline)
    if not model_dir.is_dir():
        raise ModelLoadError(f"no such directory {model_dir}")
    spec_file = model_dir / SPEC_FILENAME
    if spec_file.is_file():
        return RewardSpec.model_validate(yaml.safe_load(spec_file.read_text()) or {})
    return _infer_from_config(model_dir)


def _infer_from_config(model_dir: Path) -> RewardSpec:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir} has neither {SPEC_FILENAME} nor config.json")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    num_labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    moments = reward_moments(config)
    stats = ReferenceStats(score=Moments(mean=moments[0], std=moments[1]), source="config.json mean and std") \
        if moments else None
    if any(a.endswith("ForSequenceClassification") for a in architectures) and num_labels == 1:
        return RewardSpec(kind=ModelKind.scalar, reference_stats=stats)
    value_head = value_head_name(model_dir, config)
    if value_head is not None:
        return RewardSpec(kind=ModelKind.scalar, value_head=value_head, reference_stats=stats)
    what = f"a {num_labels}-label head" if num_labels > 1 else "what kind of reward model this is"
    raise ModelLoadError(f"{model_dir}: config.json does not say how to read {what} (architectures={architectures}, "
                         f"num_labels={num_labels}); add a {SPEC_FILENAME}: {SPEC_DOCS}")
