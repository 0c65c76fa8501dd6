"""A pairwise model's input: one ordered pair (prompt, A, B) as one token sequence, the way
each convention was trained to read it (models.pairwise).

pairrm (llm-blender's PairRM): three parts, each tokenized on its own with the tokenizer's
[CLS] ... [SEP]: `<|source|>` + prompt, `<|candidate1|>` + A, `<|candidate2|>` + B. The prompt
part holds at most source_max_length tokens, each response part at most
(source_max_length + 2 * candidate_max_length - prompt part) // 2. With conversation_layout
the texts are written as RewardBench's PairRM code writes a conversation.

ab_judge (RLHFlow's pair-preference models): the conversation written by `context_template`,
put in the question with both responses, asked as a user turn through the chat template with
no generation prompt, BOS tokens removed, tokenized without special tokens."""

from __future__ import annotations

from jinja2 import TemplateError

from models.encoding import (
    Encoder,
    check_conversation,
    check_text,
    context_field,
    plain_prompt,
    single_token_id,
    texts_of,
)
from models.errors import TRUNCATE_HINT, InputError
from models.inputs import Encoded, PairInput, ScoreInput, Truncate

# RewardBench's PairRM instruction, spelled as the model was trained with it
PAIRRM_INSTRUCTION = "Finish the following coversation in each i-th turn by filling in <Response i> with your response."


class PairEncoder(Encoder):
    def __init__(self, tokenizer, spec, max_length: int, vocab_size: int, is_encoder: bool):
        super().__init__(tokenizer, spec, max_length, vocab_size, is_encoder)
        self.prefix_ids = self.prefix_ids_of(tokenizer, spec.pairwise) if spec.pairwise.convention == "pairrm" else None

    @staticmethod
    def prefix_ids_of(tokenizer, p) -> list[int]:
        """PairRM's source, candidate-1 and candidate-2 prefix tokens' ids (each one token)."""
        return [single_token_id(tokenizer, token, what) for token, what in (
            (p.source_prefix, "pairwise.source_prefix"), (p.candidate_prefixes[0], "pairwise.candidate_prefixes[0]"),
            (p.candidate_prefixes[1], "pairwise.candidate_prefixes[1]"))]

    def encode(self, item: ScoreInput, truncate: Truncate | None = None, keep: int | None = None) -> Encoded:
        if not isinstance(item, PairInput):
            raise InputError(None, "this is a pairwise model: it compares two responses to one prompt, and scores "
                             "no single response on its own")
        for field, text in texts_of(item):
            check_text(field, text)
        if not item.context or item.context[-1][0] == "assistant":
            raise InputError(context_field(item), "the conversation before the responses must end with a prompt turn")
        check_conversation((*item.context, ("assistant", item.first)))
        if self.prefix_ids is not None:
            return self._encode_pairrm(item, truncate)
        limit = min(keep, self.max_length) if keep and truncate else self.max_length
        return self._fit(self._encode_judge(item), truncate, limit)

    # ---- pairrm ------------------------------------------------------------------

    def _encode_pairrm(self, item: PairInput, truncate: Truncate | None) -> Encoded:
        p = self.spec.pairwise
        source, first, second = self._pairrm_texts(item)
        parts, cut = [], False
        for text, limit, field in ((p.source_prefix + source, p.source_max_length, context_field(item)),
                                   (p.candidate_prefixes[0] + first, None, "first"),
                                   (p.candidate_prefixes[1] + second, None, "second")):
            limit = limit or (p.max_length - len(parts[0])) // 2  # what the prompt part leaves
            ids, was_cut = self._part(text, limit, truncate, field)
            parts.append(ids)
            cut |= was_cut
        for part, field in zip(parts, (context_field(item), "first", "second")):
            if any(t in self.prefix_ids for t in part[2:]):  # part[1] is its own prefix
                raise InputError(field, "the text holds one of PairRM's prefix tokens "
                                 f"({p.source_prefix}, {', '.join(p.candidate_prefixes)}), which mark its parts")
        ids = [t for part in parts for t in part]
        return Encoded(ids, None, prompt_length=len(parts[0]), truncated=cut)

    def _pairrm_texts(self, item: PairInput) -> tuple[str, str, str]:
        """(source, A, B): RewardBench's conversation layout (user turns with <Response i>
        slots; each response its conversation's assistant turns), or the texts as they are."""
        if not self.spec.pairwise.conversation_layout:
            return plain_prompt(item.context), item.first, item.second
        turns = item.context
        if any(role != ("user", "assistant")[k % 2] for k, (role, _) in enumerate(turns)):
            raise InputError(context_field(item), "PairRM reads a conversation of user and assistant turns in "
                             "turn, starting with a user turn")
        users, earlier = [c for _, c in turns[0::2]], [c for _, c in turns[1::2]]
        source = PAIRRM_INSTRUCTION + "\n".join(f"USER: {u}\nAssistant: <Response {k + 1}>"
                                                for k, u in enumerate(users))

        def candidate(response: str) -> str:
            return "\n".join(f"<Response {k + 1}>: {a}" for k, a in enumerate([*earlier, response]))

        return source, candidate(item.first), candidate(item.second)

    def _part(self, text: str, limit: int, truncate: Truncate | None, field: str) -> tuple[list[int], bool]:
        """One part's tokens ([CLS] prefix ... [SEP]) within `limit`: cut as `truncate` says,
        keeping the [CLS], the prefix token and the [SEP]; too long without it is an error."""
        ids = self.tokenizer.encode(text, add_special_tokens=True, verbose=False)
        if len(ids) <= limit:
            return ids, False
        if truncate is None:
            raise InputError(field, f"{field} is {len(ids)} tokens with its markers, more than the {limit} PairRM "
                             f"reads of it; {TRUNCATE_HINT}", code="input_too_long")
        body = ids[2:-1]
        keep = max(limit - 3, 0)
        kept = body[len(body) - keep:] if truncate == "left" else body[:keep]
        return ids[:2] + kept + ids[-1:], True

    # ---- ab_judge ----------------------------------------------------------------

    def _encode_judge(self, item: PairInput) -> Encoded:
        p = self.spec.pairwise
        turns = [{"role": r, "content": c} for r, c in item.context]
        try:
            context = self.tokenizer.apply_chat_template(turns, chat_template=p.context_template, tokenize=False)
        except TemplateError as err:
            raise InputError(context_field(item), f"pairwise.context_template refuses this conversation: {err}") \
                from err
        question = p.template.format(context=context, response_a=item.first, response_b=item.second)
        text = self._render([{"role": "user", "content": question}], add_generation_prompt=False) \
            if self.use_template else question
        if self.tokenizer.bos_token:
            text = text.replace(self.tokenizer.bos_token, "")
        return Encoded(self.tokenizer.encode(text, add_special_tokens=False, verbose=False))
