"""A reference set scored through a reward pipeline in-process, on the path a server scores
it by: every configured model loaded into a registry, the scorer's pipelines started (the
rule worker pool, whose forkserver re-imports the main module: the console entry point and
`python -m service.cli` guard it), each line one /v1/score request, all of a chunk's lines
in flight together so the models batch them. What comes back of an item is what the
pipeline's drift windows receive of it (service.monitoring.pipeline_metrics.drift_view)."""

from __future__ import annotations

import asyncio
import sys
from itertools import islice
from pathlib import Path

from pydantic import ValidationError

from models.heads import RewardOutput
from service.cli.scoring import CHUNK, error_record, line_count, parse_error, parse_item, refusal
from service.config import Settings
from service.core.errors import APIError, renamed
from service.core.inputs import item_input, rule_input
from service.core.scoring import ScoreJob, Scorer
from service.engine.registry import ModelRegistry
from service.monitoring.pipeline_metrics import drift_view
from service.protocol.enums import Truncate


class PipelineRefused(Exception):
    """The pipeline cannot score the reference set: why, in a line."""


def score_pipeline_reference(settings: Settings, name: str, source: Path, truncate: str | None,
                             quiet: bool) -> tuple[list[RewardOutput], str]:
    """Each line's drift view, in order, and the pipeline's revision. A line the server would
    refuse (4xx) stops the run, named; an item a component failed (on_component_error 'fail')
    is left out, as the drift windows leave it out, and counted on stderr."""
    return asyncio.run(_score(settings, name, source, truncate and Truncate(truncate), quiet))


async def _score(settings: Settings, name: str, source: Path, truncate: Truncate | None,
                 quiet: bool) -> tuple[list[RewardOutput], str]:
    from tqdm import tqdm

    registry = ModelRegistry(settings)
    scorer = Scorer(registry, settings)
    try:
        await asyncio.gather(asyncio.to_thread(registry.load_all), scorer.pipelines.start())
        if (status := scorer.pipelines.status(name)) != "ready":
            raise PipelineRefused(f"pipeline {name} is {status}: {scorer.pipelines.error(name)}")
        outputs, failed, first = [], 0, 0
        total = line_count(source)
        with source.open() as lines, tqdm(total=total, unit="item", file=sys.stderr, disable=quiet) as bar:
            while chunk := list(islice(lines, CHUNK)):
                scored = await asyncio.gather(*(_score_line(scorer, name, line, truncate) for line in chunk))
                for index, result in enumerate(scored, first):
                    if isinstance(result, RewardOutput):
                        outputs.append(drift_view(result))
                    elif result.status < 500:
                        raise PipelineRefused(refusal(source, error_record(index, result.code, result.message,
                                                                           result.field)))
                    else:
                        failed += 1
                first += len(chunk)
                bar.update(len(chunk))
        if failed:
            print(f"{failed} of {total} items failed a component and are left out, as the drift windows leave "
                  "them out", file=sys.stderr)
        return outputs, scorer.pipelines.revision(name)
    finally:
        await scorer.pipelines.close()
        await registry.close()


async def _score_line(scorer: Scorer, name: str, line: str, truncate: Truncate | None) -> RewardOutput | APIError:
    """One line scored as a one-item request: its pipeline output, or the error the server
    would answer with (its field named within the item)."""
    try:
        item = parse_item(line)
    except ValidationError as err:
        return APIError(422, *parse_error(err))
    job = ScoreJob(inputs=[item_input(item)], texts=(rule_input(item),), model=name, truncate=truncate)
    try:
        return (await scorer.score(job)).outputs[0]
    except APIError as err:
        return renamed(err, lambda _, rest: rest.lstrip(".") or "item", "item")
