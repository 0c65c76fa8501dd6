"""One reward pipeline at work: its model components scored through the served models'
schedulers (batched with every other request, each model once per request), its rules and
user functions in the isolated worker pool, one call per item, all at once; then each item's
values transformed, weighted, summed and gated."""

from __future__ import annotations

import asyncio
import inspect
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from models.heads import RewardOutput
from service.config.pipeline import (
    Component,
    EnsembleComponent,
    ModelComponent,
    PipelineConfig,
    PythonComponent,
    RuleComponent,
)
from service.pipelines.observer import PipelineObserver
from service.pipelines.rules import BUILTIN_RULES, RuleInput
from service.pipelines.values import ComponentFailed, ComponentValue, PipelineOutput, ensemble_value, transformed
from service.pipelines.workers import Outcome, RulePool
from service.protocol.enums import StepAggregate

NEEDS_GROUND_TRUTH = ("math_verify", "match")


@dataclass(frozen=True)
class ModelCall:
    """What a pipeline asks one served model for: its outputs for every item of the request,
    z-scored or raw, with a process model's step aggregate."""

    model: str
    zscore: bool = False
    aggregate: StepAggregate | None = None


# The transport's way of scoring a request's items with one model: per item an output or the
# exception that item failed with (a failure of the whole request raises).
ScoreModel = Callable[[ModelCall], Awaitable[list[RewardOutput | Exception]]]


def model_calls(component: Component) -> list[ModelCall]:
    if isinstance(component, ModelComponent):
        zscore = bool(component.transform) and component.transform[0].type == "zscore"
        return [ModelCall(component.model, zscore, component.aggregate)]
    if isinstance(component, EnsembleComponent):
        return [ModelCall(model, component.normalize == "zscore") for model in component.models]
    return []


class Pipeline:
    def __init__(self, config: PipelineConfig, pool: RulePool | None, default_timeout_s: float,
                 tokenizer_path: Callable[[str], str] = str):
        self.config = config
        self.name = config.name
        self.pool = pool
        self.default_timeout_s = default_timeout_s
        self.tokenizer_path = tokenizer_path  # `length`'s tokenizer: a served model's name or a directory
        self.observer = PipelineObserver()  # service.monitoring installs the real one
        self.calls = list(dict.fromkeys(call for c in config.components for call in model_calls(c)))
        for c in config.components:
            if isinstance(c, RuleComponent):
                check_params(c)

    @property
    def reads_text(self) -> bool:
        """Whether a component reads the item's text (rules and user functions do)."""
        return any(isinstance(c, (RuleComponent, PythonComponent)) for c in self.config.components)

    def missing_input(self, item: RuleInput) -> str | None:
        """The item field a component needs and the item lacks, said as a message."""
        for c in self.config.components:
            if isinstance(c, RuleComponent) and c.rule in NEEDS_GROUND_TRUTH and item.ground_truth is None:
                return f"pipeline {self.name!r}: component {c.name!r} ({c.rule}) needs the item's ground_truth"
        return None

    async def run(self, items: Sequence[RuleInput | None], score_model: ScoreModel) -> list[PipelineOutput | Exception]:
        """Each item's reward, in order; an item whose component failed under
        on_component_error 'fail' gets its ComponentFailed. `items` are the texts rules read
        (None where a pipeline reads none)."""
        model_task = asyncio.gather(*(self._timed_model(call, score_model) for call in self.calls))
        rule_tasks = []
        for c in self.config.components:
            if isinstance(c, (RuleComponent, PythonComponent)):
                params = self._params(c)
                rule_tasks.append(asyncio.gather(*(self._rule(c, params, item) for item in items)))
        try:
            scored = dict(zip(self.calls, await model_task, strict=True))
            ruled = iter(await asyncio.gather(*rule_tasks))
        except BaseException:
            for task in (model_task, *rule_tasks):
                task.cancel()
            raise
        columns = {}
        for c in self.config.components:
            if isinstance(c, (RuleComponent, PythonComponent)):
                columns[c.name] = [_from_outcome(o, c) for o in next(ruled)]
            else:
                columns[c.name] = [self._model_value(c, scored, i) for i in range(len(items))]
        results = [self._combined(i, {name: column[i] for name, column in columns.items()}, scored)
                   for i in range(len(items))]
        self.observer.scored(results)
        return results

    async def _timed_model(self, call: ModelCall, score_model: ScoreModel) -> list[RewardOutput | Exception]:
        started = time.perf_counter()
        outputs = await score_model(call)
        self.observer.model_call(call.model, time.perf_counter() - started)
        return outputs

    def _params(self, component: RuleComponent | PythonComponent) -> dict:
        """A rule's parameters as its worker reads them, once per request: `length` gets the
        directory of the tokenizer it counts in."""
        if not isinstance(component, RuleComponent):
            return {}
        params = dict(component.params)
        if component.rule == "length":
            params["tokenizer"] = self.tokenizer_path(params.get("tokenizer") or self.calls[0].model)
        return params

    async def _rule(self, component: RuleComponent | PythonComponent, params: dict, item: RuleInput) -> Outcome:
        timeout_s = component.timeout_s or self.default_timeout_s
        started = time.perf_counter()
        if isinstance(component, RuleComponent):
            outcome = await self.pool.rule(component.rule, params, item, timeout_s)
        else:
            outcome = await self.pool.python(component.function, item, timeout_s)
        self.observer.component(component.name, outcome.status, outcome.value, time.perf_counter() - started)
        return outcome

    def _model_value(self, component: ModelComponent | EnsembleComponent, scored: dict, i: int) -> ComponentValue:
        outputs = [scored[call][i] for call in model_calls(component)]
        failed = next((out for out in outputs if isinstance(out, Exception)), None)
        if failed is not None:
            self.observer.component(component.name, "error", None, None)
            return ComponentValue(None, "error", str(failed), cause=failed)
        if isinstance(component, ModelComponent):
            out = outputs[0]
            raw = out.score if component.dimension is None else out.dimensions[component.dimension]
            value = ComponentValue(raw)
        else:
            value = ensemble_value(component, [out.score for out in outputs])
            self.observer.spread(component.name, value.spread)
        value = replace(value, value=transformed(value.value, component.transform))
        self.observer.component(component.name, "ok", value.value, None)
        return value

    def _combined(self, i: int, values: dict[str, ComponentValue], scored: dict) -> PipelineOutput | Exception:
        config = self.config
        for name, value in values.items():
            if value.status != "ok":
                if config.on_component_error == "fail":
                    return ComponentFailed(name, value.status, value.message, value.cause)
                values[name] = replace(value, value=config.default_value)
        by_name = {c.name: c for c in config.components}
        reward = sum(by_name[name].weight * v.value for name, v in values.items())
        gate = next((g for g in config.gates if g.closes(values[g.component].value)), None)
        if gate is not None:
            reward = gate.reward
        spreads = [by_name[name].weight * v.spread for name, v in values.items() if v.spread is not None]
        outputs = [out for call in self.calls if isinstance(out := scored[call][i], RewardOutput)]
        return PipelineOutput(
            score=reward, dimensions={name: v.value for name, v in values.items()},
            num_tokens=sum(out.num_tokens for out in outputs), truncated=any(out.truncated for out in outputs),
            components=values, uncertainty=math.sqrt(sum(s * s for s in spreads)) if spreads else None)


def check_params(component: RuleComponent) -> None:
    """ValueError naming the component when its params do not fit its rule (a missing or
    unknown parameter, a regex that does not compile), so the pipeline fails at start-up,
    not on every item."""
    params = {"tokenizer": ""} | component.params if component.rule == "length" else component.params
    try:
        inspect.signature(BUILTIN_RULES[component.rule]).bind(None, **params)
        for key in ("pattern", "must_match", "must_not_match"):
            for pattern in [params[key]] if isinstance(params.get(key), str) else params.get(key) or ():
                re.compile(pattern)
    except (TypeError, re.error) as err:
        raise ValueError(f"component {component.name!r} ({component.rule}) params {params}: {err}") from None


def _from_outcome(outcome: Outcome, component: RuleComponent | PythonComponent) -> ComponentValue:
    if outcome.status != "ok":
        return ComponentValue(None, outcome.status, outcome.message)
    return ComponentValue(transformed(outcome.value, component.transform), extras=outcome.extras)
