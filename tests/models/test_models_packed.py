"""The packed forward (every item of a batch in one row, positions restarting per item, no
padding) scores exactly as the padded batch and as each item alone, for every decoder kind;
encoders, other backends and unsupported attention stay padded."""

from __future__ import annotations

import random

import pytest
from model_cards.checkpoints import qwen25_math_prm, skywork_gemma2

from models.backends.base import ExportedGraphBackend
from models.backends.torch import TorchBackend
from models.errors import ModelLoadError
from models.inputs import StepsInput, TextPair, TokenIds
from models.packing import pack, why_not_packed
from models.reward_model import RewardModel
from models.spec import ModelKind
from service.config import ModelConfig, Settings
from service.engine.runner import ModelRunner

DECODERS = ["llama-scalar", "qwen2-scalar", "llama-helpsteer", "llama-gating", "qwen2-prm", "mistral-prm"]
PAIRS = [("Hi", "Yo"), ("What is 3 plus 4?", "It is 7."),
         ("Please reason step by step, and put your final answer within a box. " * 2,
          "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 2)]


@pytest.fixture(scope="module")
def padded_and_packed(tiny_model_dirs):
    """name -> (padded model, packed model), loaded once for the module."""
    cache: dict[str, tuple[RewardModel, RewardModel]] = {}

    def load(name: str, spec: dict | None = None) -> tuple[RewardModel, RewardModel]:
        key = f"{name}:{spec}"
        if key not in cache:
            cache[key] = tuple(RewardModel.load(name, tiny_model_dirs[name], spec=spec, packed=packed)
                               for packed in (False, True))
        return cache[key]

    return load


def filler(model: RewardModel, n: int, seed: int) -> list[int]:
    """`n` ids of ordinary tokens: no special token, no step marker."""
    avoid = model.encoder.special_ids | {model.encoder.marker_id}
    usable = [t for t in range(model.encoder.vocab_size) if t not in avoid]
    rng = random.Random(seed)
    return [rng.choice(usable) for _ in range(n)]


def mixed_items(model: RewardModel) -> list:
    """Unequal lengths from 1 token to the model's max_length, as texts (or steps) and ids."""
    longest = model.encoder.max_length
    if model.spec.kind == ModelKind.process:
        marker = model.encoder.marker_id
        return [TokenIds((marker,)), StepsInput("What is 3 plus 4?", ("Add 3 and 4.", "The answer is 7.")),
                TokenIds(tuple(filler(model, 9, 1) + [marker] + filler(model, 4, 2) + [marker])),
                TokenIds(tuple(filler(model, longest - 3, 3) + [marker, *filler(model, 1, 4), marker])),
                TokenIds(tuple(filler(model, 30, 5) + [marker]), prompt_length=12)]
    items = [TextPair(*pair) for pair in PAIRS]
    return [TokenIds(tuple(filler(model, 1, 6)), prompt_length=1), *items,
            TokenIds(tuple(filler(model, longest, 7)), prompt_length=longest // 3)]


def assert_three_ways_agree(padded, packed, items, assert_outputs_match):
    lengths = [padded.encode(item).num_tokens for item in items]
    assert len(set(lengths)) == len(lengths) >= 3, "the batch must mix lengths"
    alone = [padded.score([item])[0] for item in items]
    assert_outputs_match(padded.score(items), alone)
    assert_outputs_match(packed.score(items), alone)
    assert_outputs_match(packed.score(items[::-1]), alone[::-1])


@pytest.mark.parametrize("name", DECODERS)
def test_packed_equals_padded_equals_unbatched(padded_and_packed, assert_outputs_match, name):
    padded, packed = padded_and_packed(name)
    assert (padded.packed, packed.packed) == (False, True)
    items = mixed_items(padded)
    assert min(padded.encode(i).num_tokens for i in items) == 1
    assert max(padded.encode(i).num_tokens for i in items) == padded.encoder.max_length
    assert_three_ways_agree(padded, packed, items, assert_outputs_match)


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar"])
def test_packed_skips_pad_tokens_as_last_non_pad_reads(padded_and_packed, assert_outputs_match, name):
    """pad = EOS: an item ending in EOS is read before it, an item of EOS only at its own
    first token (not at the row's), whatever its place in the row."""
    padded, packed = padded_and_packed(name)
    eos = padded.encoder.tokenizer.eos_token_id
    assert eos == padded.config.pad_token_id
    body = padded.encode(TextPair(*PAIRS[1])).input_ids
    items = [TokenIds(tuple(body + [eos])), TokenIds((eos,)), TokenIds(tuple(body[:3] + [eos, eos])),
             TokenIds(tuple(filler(padded, 40, 8)))]
    assert_three_ways_agree(padded, packed, items, assert_outputs_match)
    at_eos = padded.score([TokenIds(tuple(body + [eos]))])[0].score
    assert at_eos == pytest.approx(padded.score([TokenIds(tuple(body))])[0].score, abs=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_packed_head_file_pooling(padded_and_packed, tiny_models, assert_outputs_match, pooling):
    spec = {**tiny_models["llama-gating"].spec.model_dump(mode="json"), "pooling": pooling}
    padded, packed = padded_and_packed("llama-gating", spec)
    assert_three_ways_agree(padded, packed, mixed_items(padded), assert_outputs_match)


def test_packed_outputs_keep_the_heads_shapes_and_the_padded_contract(padded_and_packed):
    """Sequence outputs keep their [B, ...] shapes; process models give step logits at the
    markers only. The declared graph contract (ONNX, Triton, KServe) stays the padded one."""
    padded, packed = padded_and_packed("llama-gating")
    batch = [packed.encode(item) for item in mixed_items(packed)]
    outputs = packed.backend.packed(pack(batch, gated=True, process=False))
    assert {name: tuple(t.shape) for name, t in outputs.items()} == {
        "values": (len(batch), 5), "gating_weights": (len(batch), 3), "gated_score": (len(batch),)}
    assert packed.graph_contract == padded.graph_contract
    prm_padded, prm = padded_and_packed("qwen2-prm")
    batch = [prm.encode(item) for item in mixed_items(prm)]
    markers = sum(len(enc.marker_positions) for enc in batch)
    assert tuple(prm.backend.packed(pack(batch, gated=False, process=True))["step_logits"].shape) == (markers, 2)
    assert prm.graph_contract == prm_padded.graph_contract
    assert prm.graph_contract[1] == {"step_logits": [-1, -1, 2]}


def test_auto_packs_only_under_a_variable_length_kernel(tiny_model_dirs, assert_outputs_match):
    """These decoders load with sdpa, which computes a packed row's whole [N, N] mask: auto
    leaves them padded, and packs the same graph under flash attention. Encoders never pack."""
    llama = RewardModel.load("llama", tiny_model_dirs["llama-scalar"])
    graph = llama.backend.graph
    assert graph.model.config._attn_implementation == "sdpa" and not llama.packed
    assert why_not_packed(graph) is None
    graph.model.config._attn_implementation = "flash_attention_2"
    assert TorchBackend(graph, "cpu").packing.chosen(None, "llama") is True
    bert = RewardModel.load("bert", tiny_model_dirs["bert-scalar"])
    assert not bert.packed and why_not_packed(bert.backend.graph) is not None
    explicit = RewardModel.load("bert", tiny_model_dirs["bert-scalar"], packed=False)
    items = [TextPair(*pair) for pair in PAIRS]
    assert_outputs_match(bert.score(items), explicit.score(items), tol=0)


def test_packed_true_on_an_encoder_is_a_load_error(tiny_model_dirs):
    with pytest.raises(ModelLoadError, match="cannot run packed: an encoder"):
        RewardModel.load("bert", tiny_model_dirs["bert-scalar"], packed=True)
    with pytest.raises(ModelLoadError, match="only the torch backend runs packed"):
        ExportedGraphBackend.packing.chosen(True, "bert")
    assert ExportedGraphBackend.packing.chosen(None, "bert") is False


def test_model_config_packed_reaches_the_model(tiny_model_dirs):
    for name, packed, status in (("bert-scalar", True, "failed"), ("llama-scalar", False, "ready")):
        config = ModelConfig(name="m", path=str(tiny_model_dirs[name]), packed=packed)
        runner = ModelRunner(config, Settings(models=[config]))
        runner.load()
        assert runner.status == status, runner.error
        if status == "failed":
            assert "packed: true" in runner.error and "encoder" in runner.error
        else:
            assert runner.model.packed is False
        runner.close()


def test_gemma2_eager_attention_packs_only_when_asked(tmp_path, assert_outputs_match):
    """Gemma 2 loads with eager attention (for its logit soft-capping), which keeps packed
    items apart too, sliding-window layers included, but materializes [N, N] weights over
    the whole row: auto leaves it padded; asked for, it packs and scores the same."""
    directory = skywork_gemma2(tmp_path / "gemma2")
    padded = RewardModel.load("gemma2", directory)
    assert padded.backend.graph.model.config._attn_implementation == "eager" and not padded.packed
    packed = RewardModel.load("gemma2", directory, packed=True)
    window = padded.backend.graph.model.config.sliding_window
    items = [TextPair(*pair) for pair in PAIRS] + [TokenIds((5,))]
    assert max(padded.encode(item).num_tokens for item in items) > 4 * window
    assert_three_ways_agree(padded, packed, items, assert_outputs_match)


def test_remote_code_stays_padded(tmp_path):
    """Remote code may drop position_ids (Qwen2.5-Math-PRM's own class does): auto leaves
    it padded, and packed: true is a load error saying why."""
    directory = qwen25_math_prm(tmp_path / "prm")
    spec = {"kind": "process", "trust_remote_code": True, "unused_weights": ["lm_head."],
            "process": {"convention": "separator", "marker": "<extra_0>"}}
    assert not RewardModel.load("prm", directory, spec=spec).packed
    with pytest.raises(ModelLoadError, match="Qwen2ForProcessRewardModel is remote code"):
        RewardModel.load("prm", directory, spec=spec, packed=True)
