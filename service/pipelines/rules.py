from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RuleInput:
    response: str
    prompt: str | None = None
    ground_truth: Any = None
    data_source: str | None = None
    extra_info: dict | None = None
