"""What a rollout OpenRLHF posts to `/get_reward` carries around its response: the policy
decoded prompt and response together, special tokens written out, padding and EOS left on.
These read the response back out of it."""

from __future__ import annotations

import re

from service.core.errors import APIError


class RolloutEnds:
    """The reward model's EOS, padding and BOS texts, which a decoded rollout carries at its
    ends: serve_rm strips every padding and EOS text from both ends and appends one EOS
    (the token OpenRLHF's reward models are trained to be read at); with no padding token
    the EOS pads, as OpenRLHF's tokenizer set-up makes it."""

    def __init__(self, eos: str | None, pad: str | None, bos: str | None):
        self.eos = eos or ""
        self.bos = bos or ""
        texts = [re.escape(t) for t in dict.fromkeys((eos, pad or eos)) if t]
        run = f"(?:{'|'.join(texts)})+" if texts else None
        self._leading = re.compile(f"^{run}") if run else None
        self._trailing = re.compile(f"{run}$") if run else None

    @classmethod
    def of(cls, tokenizer) -> RolloutEnds:
        return cls(tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token)

    def strip(self, text: str) -> str:
        if self._leading is None:
            return text
        return self._trailing.sub("", self._leading.sub("", text))

    def without_bos(self, text: str, prompt: str) -> str:
        """`text` less a leading BOS text its prompt lacks: a policy served by vLLM decodes
        its BOS into the query (`<s>Human: ...`) while the prompt it was given has none."""
        if self.bos and text.startswith(self.bos) and not prompt.lstrip().startswith(self.bos):
            return text[len(self.bos):]
        return text


def response_after(query: str, prompt: str) -> str | None:
    """What follows `prompt` in `query`, or None when the query does not start with it.
    The trainer decodes prompt and response together, and a SentencePiece tokenizer's
    decode puts a space after a special token (`<s> [INST]` for the prompt `<s>[INST]`),
    so where the exact prefix is missing the prompt is matched ignoring whitespace."""
    if query.startswith(prompt):
        return query[len(prompt):]
    at = 0
    for char in prompt:
        if char.isspace():
            continue
        while at < len(query) and query[at].isspace():
            at += 1
        if at == len(query) or query[at] != char:
            return None
        at += 1
    return query[at:]


def split_response(ends: RolloutEnds, text: str, prompt: str, index: int) -> str:
    """The response after `prompt` in query `index` (its ends stripped already): 422 naming
    the query when it does not start with its prompt."""
    response = response_after(ends.without_bos(text, prompt), prompt)
    if response is None:
        raise APIError(422, "invalid_request", f"query[{index}] does not start with prompts[{index}] (even "
                       "ignoring whitespace)", f"query[{index}]")
    return response
