"""Turns request inputs into token ids the way the model was trained to see them.

Text pairs and chats go through the tokenizer's chat template when it has one (and the
spec allows), tokenized as the model cards do; without a template, encoders pair-encode and
decoders read prompt and response as one text. A label-token judge's are first put in its
question (spec.label_tokens). Process inputs get their step markers inserted here. Every
input is checked against the model's length limit: too long is an error unless the caller
asked for truncation.
"""

from __future__ import annotations

from jinja2 import TemplateError

from models.errors import TRUNCATE_HINT, InputError, ModelLoadError
from models.inputs import Chat, Encoded, PairInput, RenderedText, ScoreInput, StepsInput, TextPair, TokenIds, Truncate
from models.spec import ModelKind, RewardSpec

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


class Encoder:
    def __init__(self, tokenizer, spec: RewardSpec, max_length: int, vocab_size: int, is_encoder: bool):
        self.tokenizer = tokenizer
        self.spec = spec
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.is_encoder = is_encoder
        self.use_template = bool(spec.use_chat_template and getattr(tokenizer, "chat_template", None))
        bos_id = tokenizer.bos_token_id
        self.adds_bos = bos_id is not None and tokenizer.encode("a", add_special_tokens=True)[:1] == [bos_id]
        if spec.system_prompt is not None and not self.use_template:
            raise ModelLoadError("system_prompt is rendered through the chat template, and this model has none in use")
        self.special_ids = frozenset(tokenizer.all_special_ids)
        # Texts longer than this many characters hold more than max_length tokens unless
        # their tokenizer drops characters (whitespace, say): the longest token spells out
        # this many characters at most.
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_text_chars = max_length * max(longest, 1)
        # Pair encodings with segment ids ([CLS] a [SEP] b [SEP], b typed 1): input_ids get
        # the same token_type_ids, the second segment starting after the first separator.
        uses_types = "token_type_ids" in tokenizer.model_input_names
        self.segment_sep_id = tokenizer.sep_token_id if uses_types else None
        self.marker_id = self._marker_id() if spec.process else None
        mo = spec.multi_objective
        self.gates_on_prompt = bool(mo and mo.aggregate == "gating")
        self.gating_at_ids = self._gating_at_ids(mo.gating_at) if mo and mo.gating_at else None

    def _marker_id(self) -> int:
        return single_token_id(self.tokenizer, self.spec.process.marker, "process.marker")

    def _gating_at_ids(self, text: str) -> tuple[int, ...]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise ModelLoadError(f"multi_objective.gating_at {text!r} tokenizes to nothing")
        return tuple(ids)

    # ---- public ------------------------------------------------------------------

    def encode(self, item: ScoreInput, truncate: Truncate | None = None, keep: int | None = None) -> Encoded:
        """`item` as token ids; with `truncate`, cut to `keep` tokens (default, and at most:
        max_length), keeping the leading and closing special tokens."""
        if isinstance(item, PairInput):
            raise InputError(None, "a pair of responses to compare is for pairwise models; this one scores each "
                             "response on its own")
        for field, text in texts_of(item):
            check_text(field, text)
        item = self._cut_long_texts(item, truncate)
        is_process = self.spec.kind == ModelKind.process
        if isinstance(item, StepsInput):
            if not is_process:
                raise InputError("steps", "steps are for process reward models; send prompt and response")
            if not item.steps:
                raise InputError("steps", "steps must not be empty")
            encoded = self._encode_pair(item.prompt, self._render_steps(item.steps))
        elif is_process and not isinstance(item, (TokenIds, RenderedText)):
            raise InputError("steps", "this is a process reward model: send prompt and steps (or input_ids)")
        elif isinstance(item, RenderedText):
            encoded = self._encode_rendered(item)
        elif isinstance(item, (TextPair, Chat)) and self.spec.label_tokens:
            encoded = self._encode_question(item)
        elif isinstance(item, TextPair):
            encoded = self._encode_pair(item.prompt, item.response)
        elif isinstance(item, Chat):
            encoded = self._encode_chat(item.messages)
        else:
            encoded = self._check_ids(item)
        encoded = self._fit(encoded, truncate, min(keep, self.max_length) if keep and truncate else self.max_length)
        if self.gates_on_prompt:
            encoded.gate_position = self._gate_position(encoded, item)
        if self.spec.kind == ModelKind.implicit and not 0 < (encoded.prompt_length or 0) < encoded.num_tokens:
            field = "response" if isinstance(item, TextPair) else field_of(item)
            raise InputError(field, "an implicit reward counts the response's tokens only: give the prompt "
                             "(prompt_length with input_ids) and a response of at least one token")
        if is_process:
            expected = len(item.steps) if isinstance(item, StepsInput) else None
            encoded.marker_positions = self._markers(encoded, expected, field_of(item))
        return encoded

    # ---- long texts --------------------------------------------------------------

    def kept_end(self, text: str, truncate: Truncate | None) -> str | None:
        """For a text past max_text_chars, the end truncation keeps (its last max_text_chars
        characters for left truncation, else its first) when that piece alone already holds
        more than max_length tokens, so nothing beyond it could be kept; else None (the text
        is short, or its tokenizer drops characters and the whole must be tokenized)."""
        if len(text) <= self.max_text_chars:
            return None
        piece = text[-self.max_text_chars:] if truncate == "left" else text[:self.max_text_chars]
        long_enough = len(self.tokenizer.encode(piece, add_special_tokens=False, verbose=False)) > self.max_length + 1
        return piece if long_enough else None

    def _cut_long_texts(self, item: ScoreInput, truncate: Truncate | None) -> ScoreInput:
        """Bound the tokenization a huge text costs (`kept_end`): without truncation such
        an item is refused at once, with it the kept end stands in for the text (the same
        tokens are kept). Steps are never cut inside one (`_fit` drops them whole)."""
        cut: dict[str, str] = {}
        for field, text in texts_of(item):
            piece = self.kept_end(text, truncate)
            if piece is None:
                continue
            if truncate is None:
                raise InputError(field, f"{field} alone is more than the model's max_length {self.max_length} tokens; "
                                 + TRUNCATE_HINT, code="input_too_long")
            cut[field] = piece
        if not cut or isinstance(item, StepsInput):
            return item
        if isinstance(item, RenderedText):  # the prompt marks the text's start, which left truncation cut
            return RenderedText(cut["text"], item.prompt if truncate == "right" else None)
        if isinstance(item, TextPair):
            return TextPair(cut.get("prompt", item.prompt), cut.get("response", item.response))
        return Chat(tuple((role, cut.get(f"messages[{i}].content", content))
                          for i, (role, content) in enumerate(item.messages)))

    # ---- rendering ---------------------------------------------------------------

    def _render_steps(self, steps: tuple[str, ...]) -> str:
        p = self.spec.process
        for i, step in enumerate(steps):
            if p.marker in step:
                raise InputError(f"steps[{i}]", f"step text must not contain the step marker {p.marker!r}")
        return p.after_marker.join(f"{p.step_prefix}{s}{p.step_suffix}{p.marker}" for s in steps)

    def _encode_pair(self, prompt: str, response: str) -> Encoded:
        """Through the chat template when there is one; else encoders pair-encode
        ([CLS] prompt [SEP] response [SEP], as cross-encoders are trained) and decoders
        tokenize prompt + text_separator + response as one text, special tokens once."""
        if self.use_template:
            return self._encode_chat((("user", prompt), ("assistant", response)))
        if not self.is_encoder:
            return self._encode_text(prompt + self.spec.text_separator, response)
        enc = self.tokenizer(prompt, response, add_special_tokens=True, verbose=False)
        ids = list(enc["input_ids"])
        types = enc.get("token_type_ids")
        if types is not None and any(types):
            return Encoded(ids, list(types), prompt_length=types.index(1))
        prompt_ids = self.tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
        return Encoded(ids, None, prompt_length=_common_prefix(ids, prompt_ids))

    def _encode_text(self, prompt: str, response: str) -> Encoded:
        ids = self.tokenizer.encode(prompt + response, add_special_tokens=True, verbose=False)
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=True, verbose=False)
        return Encoded(ids, None, prompt_length=_common_prefix(ids, prompt_ids))

    def _encode_chat(self, messages: tuple[tuple[str, str], ...]) -> Encoded:
        check_conversation(messages)
        if not self.use_template:
            return self._encode_pair(plain_prompt(messages[:-1]), messages[-1][1])
        messages = self._with_system_prompt(messages)
        as_dicts = [{"role": r, "content": c} for r, c in messages]
        full = self._render(as_dicts, add_generation_prompt=False)
        prompt = self._render(as_dicts[:-1], add_generation_prompt=True)
        ids, prompt_ids = self._tokenize_rendered(full), self._tokenize_rendered(prompt)
        return Encoded(ids, None, prompt_length=_common_prefix(ids, prompt_ids))

    def _encode_question(self, item: TextPair | Chat) -> Encoded:
        """A label-token judge's input: the item's prompt (a conversation's turns before its
        response, as `plain_prompt` writes them) and response put in the judge's template,
        asked as one user turn through the chat template with the generation prompt, so that
        the last token is where the answer would begin; without a template, the question as
        one text with the tokenizer's special tokens."""
        if isinstance(item, Chat):
            check_conversation(item.messages)
            item = TextPair(plain_prompt(item.messages[:-1]), item.messages[-1][1])
        question = self.spec.label_tokens.question(item.prompt, item.response)
        if not self.use_template:
            return Encoded(self.tokenizer.encode(question, add_special_tokens=True, verbose=False))
        turns = self._with_system_prompt((("user", question),))
        text = self._render([{"role": r, "content": c} for r, c in turns], add_generation_prompt=True)
        return Encoded(self._tokenize_rendered(text))

    def _with_system_prompt(self, messages: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        if self.spec.system_prompt is not None and messages[0][0] != "system":
            return (("system", self.spec.system_prompt), *messages)
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except TemplateError as err:  # e.g. Gemma's "System role not supported"
            raise InputError("messages", f"the model's chat template refuses this conversation: {err}") from err

    def _encode_rendered(self, item: RenderedText) -> Encoded:
        """The text's own tokens (an encoder's with its [CLS] and [SEP]); the prompt's length
        in tokens where the text starts with it."""
        ids = self.tokenizer.encode(item.text, add_special_tokens=self.is_encoder, verbose=False)
        prompt_length = None
        if item.prompt and item.text.startswith(item.prompt):
            prompt_ids = self.tokenizer.encode(item.prompt, add_special_tokens=self.is_encoder, verbose=False)
            prompt_length = _common_prefix(ids, prompt_ids) or None
        return Encoded(ids, None, prompt_length=prompt_length)

    def _tokenize_rendered(self, text: str) -> list[int]:
        """A rendered chat as the model cards tokenize it: with the tokenizer's own special
        tokens, less a BOS the template already wrote (so one BOS, whether the template
        writes it, as Llama 3's does, or leaves it to the tokenizer, as Skywork's do)."""
        bos = self.tokenizer.bos_token
        if bos and self.adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return self.tokenizer.encode(text, add_special_tokens=True, verbose=False)

    def _check_ids(self, item: TokenIds) -> Encoded:
        ids = list(item.input_ids)
        if not ids:
            raise InputError("input_ids", "input_ids must not be empty")
        for j, t in enumerate(ids):
            if not 0 <= t < self.vocab_size:
                raise InputError(f"input_ids[{j}]", f"token id {t} is outside the vocabulary [0, {self.vocab_size})")
        if item.prompt_length is not None and not 0 < item.prompt_length <= len(ids):
            raise InputError("prompt_length", f"prompt_length must be in [1, {len(ids)}]")
        types = None
        if self.segment_sep_id is not None and self.segment_sep_id in ids[:-1]:
            second = ids.index(self.segment_sep_id) + 1
            types = [0] * second + [1] * (len(ids) - second)
        return Encoded(ids, types, prompt_length=item.prompt_length)

    # ---- length and markers --------------------------------------------------------

    def _fit(self, enc: Encoded, truncate: Truncate | None, limit: int) -> Encoded:
        n = enc.num_tokens
        if n <= limit:
            return enc
        if truncate is None:
            raise InputError(
                None,
                f"input is {n} tokens, longer than the model's max_length {self.max_length}; " + TRUNCATE_HINT,
                code="input_too_long",
            )
        ids = enc.input_ids
        head = 1 if ids[0] in self.special_ids and limit > 1 else 0  # a one-token cut keeps the token itself
        tail = 1 if ids[-1] in self.special_ids and limit > head + 1 else 0
        keep = limit - head - tail
        start, stop = (n - tail - keep, n - tail) if truncate == "left" else (head, head + keep)
        kept = list(range(head)) + list(range(start, stop)) + list(range(n - tail, n))
        prompt_length = None
        if enc.prompt_length is not None:
            prompt_length = max(1, sum(1 for i in kept if i < enc.prompt_length))
        types = [enc.token_type_ids[i] for i in kept] if enc.token_type_ids else None
        return Encoded([ids[i] for i in kept], types, prompt_length, truncated=True)

    def _gate_position(self, enc: Encoded, item: ScoreInput) -> int:
        """Where the gating network reads: the first token of the last occurrence of
        `gating_at` (searched over the whole input, as ArmoRM's own code does), else the
        last prompt token."""
        field = field_of(item) if isinstance(item, (TokenIds, RenderedText)) else None
        if self.gating_at_ids is None:
            if not enc.prompt_length:
                if isinstance(item, RenderedText):
                    raise InputError(field, "this model gates on the prompt: give the prompt the text starts with")
                raise InputError("prompt_length", "this model gates on the prompt: give prompt_length with input_ids")
            return enc.prompt_length - 1
        pattern, ids = self.gating_at_ids, enc.input_ids
        for start in range(len(ids) - len(pattern), -1, -1):
            if tuple(ids[start:start + len(pattern)]) == pattern:
                return start
        raise InputError(field, f"the input does not contain the gating position marker "
                                f"{self.spec.multi_objective.gating_at!r} ({list(pattern)})")

    def _markers(self, enc: Encoded, expected: int | None, field: str) -> list[int]:
        start = enc.prompt_length or 0
        positions = [i for i in range(start, enc.num_tokens) if enc.input_ids[i] == self.marker_id]
        if expected is not None and not enc.truncated and len(positions) != expected:
            raise InputError(
                "steps",
                f"found {len(positions)} step markers for {expected} steps: the marker "
                f"{self.spec.process.marker!r} merged with neighbouring text when tokenized",
            )
        if not positions:
            why = (
                "truncation removed every step marker"
                if enc.truncated
                else f"no step marker {self.spec.process.marker!r} found"
            )
            raise InputError(field, why)
        return positions


def single_token_id(tokenizer, token: str, what: str) -> int:
    """The id of a token that must be one vocabulary entry (step markers, step-tag candidates,
    a judge's labels)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(f"{what} {token!r} is not a single token for this tokenizer: it tokenizes to "
                             f"{tokenizer.convert_ids_to_tokens(ids)} (ids {ids})")
    return ids[0]


def check_conversation(messages: tuple[tuple[str, str], ...]) -> None:
    """A scored conversation: known roles, ending in the assistant response after a prompt turn."""
    for i, (role, _) in enumerate(messages):
        if role not in CHAT_ROLES:
            raise InputError(f"messages[{i}].role", f"unknown role {role!r}; use one of {sorted(CHAT_ROLES)}")
    if len(messages) < 2 or messages[-1][0] != "assistant":
        raise InputError(
            "messages", "messages must end with the assistant response to score, after at least one prompt turn"
        )


def field_of(item: ScoreInput) -> str:
    """The request field an item's tokens come from, for errors about them."""
    return {StepsInput: "steps", RenderedText: "text", TokenIds: "input_ids"}.get(type(item), "messages")


def texts_of(item: ScoreInput) -> list[tuple[str, str]]:
    """(field, text) of every text in an item."""
    if isinstance(item, TextPair):
        return [("prompt", item.prompt), ("response", item.response)]
    if isinstance(item, StepsInput):
        return [("prompt", item.prompt), *((f"steps[{i}]", step) for i, step in enumerate(item.steps))]
    if isinstance(item, Chat):
        return [(f"messages[{i}].content", content) for i, (_, content) in enumerate(item.messages)]
    if isinstance(item, RenderedText):
        return [("text", item.text)]
    if isinstance(item, PairInput):
        field = context_field(item)
        context = [(field if field == "prompt" else f"messages[{k}].content", c)
                   for k, (_, c) in enumerate(item.context)]
        return [*context, ("first", item.first), ("second", item.second)]
    return []


def context_field(item: PairInput) -> str:
    """The request field of a pair's prompt: `prompt` for a lone user turn, else `messages`."""
    return "prompt" if len(item.context) == 1 and item.context[0][0] == "user" else "messages"


def check_text(field: str, text: str) -> None:
    """Refuse text that is not valid Unicode: JSON can carry a lone UTF-16 surrogate
    (`"\\ud800"`), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(field, f"not valid Unicode: a lone surrogate (U+{ord(text[err.start]):04X}) at character "
                         f"{err.start}") from None


def plain_prompt(turns: tuple[tuple[str, str], ...]) -> str:
    """The turns before the response for a model without a chat template: a lone user
    turn as its text (so a chat scores exactly as the same prompt and response sent as
    text), longer conversations as `role: content` lines."""
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n".join(f"{role}: {content}" for role, content in turns)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def max_length_for(spec: RewardSpec, config, tokenizer) -> int:
    """The spec's limit, else PairRM's parts together, else the smaller of the model's positions
    and the tokenizer's."""
    if spec.max_length:
        return spec.max_length
    if spec.pairwise and spec.pairwise.convention == "pairrm":  # relative positions: PairRM reads 2048 tokens
        return spec.pairwise.max_length
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [x for x in limits if isinstance(x, int) and 0 < x < 10_000_000]
    if not usable:
        raise ValueError("the model states no length limit: set max_length in its reward spec")
    return min(usable)
