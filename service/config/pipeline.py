"""A reward pipeline's entry in the settings (`pipelines:` beside `models:`): the reward an
RL run trains on, as served models, ensembles of them, verifiable rules and user functions,
each transformed and weighted, summed, and gated. Served like a model under its name."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, model_validator

from service.protocol.enums import StepAggregate

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RULES = ("math_verify", "match", "format", "length", "repetition")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Raw(_Strict):
    """The value as it is."""

    type: Literal["raw"] = "raw"


class Sigmoid(_Strict):
    """1 / (1 + e^-value): a logit as a probability."""

    type: Literal["sigmoid"] = "sigmoid"


class ZScore(_Strict):
    """Against the model's reference statistics; first, on model components only (an
    ensemble takes `normalize: zscore`)."""

    type: Literal["zscore"] = "zscore"


class Clip(_Strict):
    """The value kept within [low, high] (either may be left out)."""

    type: Literal["clip"] = "clip"
    low: float | None = None
    high: float | None = None


class Affine(_Strict):
    """scale * value + shift."""

    type: Literal["affine"] = "affine"
    scale: float = 1.0
    shift: float = 0.0


def _transform_list(value):
    """One transform or a list applied in order; a parameter-free one may be its bare name."""
    items = value if isinstance(value, list) else [value]
    return [{"type": item} if isinstance(item, str) else item for item in items]


Transform = Annotated[Raw | Sigmoid | ZScore | Clip | Affine, Discriminator("type")]
Transforms = Annotated[list[Transform], BeforeValidator(_transform_list)]


class _Component(_Strict):
    name: str = Field(pattern=NAME, description="the component's name: its dimension in answers and metrics")
    weight: float = Field(1.0, description="its weight in the reward's sum (0: reported and gating only)")
    transform: Transforms = Field(default_factory=list, description=(
        "applied to its value in order: raw, sigmoid, zscore (models), {type: clip, low, high}, "
        "{type: affine, scale, shift}"))


class ModelComponent(_Component):
    """A served model's score, one of its dimensions, or a process model's step aggregate."""

    type: Literal["model"]
    model: str = Field(description="a served model's name")
    dimension: str | None = Field(None, description="a multi-objective model's dimension instead of its score")
    aggregate: StepAggregate | None = Field(None, description="a process model's step aggregate for this component")


class EnsembleComponent(_Component):
    """Several served models' scores aggregated; their spread is the item's uncertainty."""

    type: Literal["ensemble"]
    models: list[str] = Field(min_length=2, description="served models' names")
    aggregate: Literal["mean", "min", "median", "lcb"] = Field("mean", description=(
        "lcb: mean - k * std, the conservative reward of ensemble RLHF"))
    k: float = Field(1.0, ge=0, description="lcb's multiple of the standard deviation")
    normalize: Literal["none", "zscore"] = Field("none", description=(
        "zscore: each member's score against its reference statistics before aggregating"))


class RuleComponent(_Component):
    """A built-in verifiable rule, run in the isolated worker pool."""

    type: Literal["rule"]
    rule: Literal[RULES] = Field(description="which built-in rule (pipelines.md describes each and its params)")
    params: dict = Field(default_factory=dict, description="the rule's parameters (docs/pipelines.md)")
    timeout_s: float | None = Field(None, gt=0, description="per-call limit; default: rules.timeout_s")


class PythonComponent(_Component):
    """A user function with veRL's compute_score(data_source, solution_str, ground_truth,
    extra_info) signature, run in the isolated worker pool."""

    type: Literal["python"]
    function: str = Field(description="`module:function` or `path/to/file.py:function`")
    timeout_s: float | None = Field(None, gt=0, description="per-call limit; default: rules.timeout_s")


Component = Annotated[ModelComponent | EnsembleComponent | RuleComponent | PythonComponent, Discriminator("type")]


class Gate(_Strict):
    """When `component`'s value is below `below` (or above `above`), the reward is `reward`."""

    component: str = Field(description="a component's name")
    below: float | None = Field(None, description="closes when the component's value is below this")
    above: float | None = Field(None, description="closes when the component's value is above this")
    reward: float = Field(description="the reward when it closes")

    @model_validator(mode="after")
    def _one_bound(self) -> Gate:
        if (self.below is None) == (self.above is None):
            raise ValueError("a gate needs exactly one of below and above")
        return self

    def closes(self, value: float) -> bool:
        return value < self.below if self.below is not None else value > self.above


class PipelineConfig(_Strict):
    name: str = Field(pattern=NAME, description="the name requests give as `model`")
    components: list[Component] = Field(min_length=1, description="what the reward is made of (below)")
    gates: list[Gate] = Field(default_factory=list, description="checked in order; the first that closes wins")
    on_component_error: Literal["fail", "default"] = Field("fail", description=(
        "a component that errs or times out: 'fail' its item, or 'default': take `default_value` (its status "
        "still says what happened)"))
    default_value: float = Field(0.0, description="a failed component's value under on_component_error 'default'")
    drift_baseline: str | None = Field(None, description=(
        "a drift_baseline.jsonl for the reward (`score`) and each component's value (`dim:<component>`), "
        "which `rewardserve baseline FILE.jsonl --model <pipeline> --write` writes; without it the drift windows "
        "are kept, not judged"))

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"pipeline {self.name!r}: component names must be unique: {names}")
        for gate in self.gates:
            if gate.component not in names:
                raise ValueError(f"pipeline {self.name!r}: gate on {gate.component!r}, which is not a component")
        for c in self.components:
            if c.type == "rule" and c.rule == "length" and "tokenizer" not in c.params and not self.served_models:
                raise ValueError(f"pipeline {self.name!r}: component {c.name!r} (length) counts tokens: give "
                                 "params.tokenizer (a served model's name or a tokenizer directory)")
            kinds = [t.type for t in c.transform]
            if "zscore" in kinds and (kinds.index("zscore") != 0 or c.type != "model"):
                raise ValueError(f"pipeline {self.name!r}: component {c.name!r}: zscore comes first and on model "
                                 "components only (ensembles take normalize: zscore)")
        return self

    @property
    def served_models(self) -> set[str]:
        found = set()
        for c in self.components:
            found |= {c.model} if c.type == "model" else set(c.models) if c.type == "ensemble" else set()
        return found
