import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    status: str
    value: float | None = None
    message: str | None = None
    extras: dict | None = None
class RulePool:
    def __init__(self, workers): pass
    async def start(self): pass
    async def rule(self, name, params, item, timeout_s):
        if name == "format":
            ok = all(re.search(p, item.response) for p in params.get("must_match", ()))
            return Outcome("ok", float(ok))
        return Outcome("ok", float(str(item.ground_truth) in item.response))
    async def python(self, f, item, t): return Outcome("error", None, "boom")
    async def check_python(self, f, t): pass
    async def close(self): pass
