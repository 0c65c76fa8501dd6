"""Group scoring with a shared prompt (models.shared_prefix): items of a batch that begin with
the same tokens compute that prefix once and their own tokens against its KV cache, and
score exactly as the unshared batch and as each item alone, for every read (last non-pad
token, LM-head rows, gating inside or after the prefix, step markers on either side), with
the other items of the batch on the usual path. Every parity test also checks, by the
model's counters, that the shared path really ran."""

from __future__ import annotations

import pytest
from model_cards.checkpoints import qwen25_math_prm, skywork_gemma2
from test_models_packed import filler

from models.backends.base import ExportedGraphBackend
from models.errors import ModelLoadError
from models.inputs import StepsInput, TextPair, TokenIds
from models.reward_model import RewardModel
from models.shared_prefix import (
    GROUP_COST,
    MIN_PREFIX,
    Group,
    PrefixSharing,
    prefix_groups,
)
from models.spec import ModelKind
from service.config import ModelConfig, Settings
from service.engine.runner import ModelRunner

P = 60  # a shared prompt's length: 4 responses to it save 3 * P > GROUP_COST tokens


@pytest.fixture(scope="module")
def shared_and_plain(tiny_model_dirs):
    """name -> (model sharing prefixes, model never sharing), loaded once for the module."""
    cache: dict[str, tuple[RewardModel, RewardModel]] = {}

    def load(name: str, **options) -> tuple[RewardModel, RewardModel]:
        key = f"{name}:{options}"
        if key not in cache:
            cache[key] = tuple(RewardModel.load(name, tiny_model_dirs[name], share_prefix=share, **options)
                               for share in (True, False))
        return cache[key]

    return load


def assert_shared_agrees(shared, plain, items, assert_outputs_match, groups: int = 1) -> None:
    """`items` scored by the sharing model (in this order and reversed), by the unshared
    batch and one at a time agree, and the sharing model ran `groups` shared groups each time."""
    sharing = shared.prefix_sharing
    alone = [plain.score([item])[0] for item in items]
    assert_outputs_match(plain.score(items), alone)
    for order in (items, items[::-1]):
        before = sharing.groups
        assert_outputs_match(shared.score(order), alone if order is items else alone[::-1])
        assert sharing.groups - before == groups


def group_items(model: RewardModel, prefix: list[int], seed: int = 0) -> list[TokenIds]:
    """Responses of unequal lengths (1 to 30 tokens) to one prompt; gating models' positions
    alternate between inside the prefix and after it."""
    items = []
    for i, n in enumerate((1, 5, 17, 30)):
        body = prefix + filler(model, n, seed + i)
        items.append(TokenIds(tuple(body), prompt_length=P // 2 if i % 2 else min(len(body), P + 3)))
    return items


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar", "llama-helpsteer", "llama-gating"])
def test_sequence_reads_equal_unshared_and_unbatched(shared_and_plain, assert_outputs_match, name):
    shared, plain = shared_and_plain(name)
    assert isinstance(shared.prefix_sharing, PrefixSharing) and plain.prefix_sharing is None
    items = group_items(shared, filler(shared, P, 1))
    others = [TokenIds(tuple(filler(shared, 25, 2)), prompt_length=10), TextPair("Hi", "Yo"),
              TextPair("What is 3 plus 4?", "It is 7.")]
    saved = shared.prefix_sharing.tokens_saved
    assert_shared_agrees(shared, plain, items[:2] + others + items[2:], assert_outputs_match)
    assert shared.prefix_sharing.tokens_saved - saved == 2 * (len(items) - 1) * P
    if name == "llama-gating":  # gating read at positions inside the prefix and after it
        gates = [shared.encode(item).gate_position for item in items]
        assert min(gates) < P <= max(gates)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_head_file_pooling(shared_and_plain, tiny_models, assert_outputs_match, pooling):
    """Every pooling a head file may read, over prefix and suffix states alike."""
    spec = {**tiny_models["llama-gating"].spec.model_dump(mode="json"), "pooling": pooling}
    shared, plain = shared_and_plain("llama-gating", spec=spec)
    items = group_items(shared, filler(shared, P, 25)) + [TokenIds(tuple(filler(shared, 12, 26)), prompt_length=4)]
    assert_shared_agrees(shared, plain, items, assert_outputs_match)


@pytest.mark.parametrize("name", ["qwen2-prm", "mistral-prm"])
def test_step_markers_in_the_prefix_and_the_suffix(shared_and_plain, assert_outputs_match, name):
    """Qwen2 token classification at `<extra_0>`, Mistral step-tag LM rows at `ки`: markers
    inside the shared prefix (read from the prefix forward) and after it."""
    shared, plain = shared_and_plain(name)
    marker = shared.encoder.marker_id
    prefix = filler(shared, P, 3)
    prefix[12] = prefix[P - 1] = marker
    items = [TokenIds(tuple(prefix + filler(shared, 4, 4))),  # the prefix's markers only
             *(TokenIds(tuple(prefix + filler(shared, n, 5 + n) + [marker] + filler(shared, 2, 9) + [marker]))
               for n in (1, 8, 20))]
    positions = [shared.encode(item).marker_positions for item in items]
    assert positions[0] == [12, P - 1] and all(max(p) >= P for p in positions[1:])
    others = [StepsInput("What is 3 + 4?", ("Add 3 and 4.", "The answer is 7.")),
              TokenIds(tuple(filler(shared, 9, 10) + [marker]))]
    assert_shared_agrees(shared, plain, [items[0], others[0], *items[1:], others[1]], assert_outputs_match)


@pytest.mark.parametrize("name", ["llama-scalar", "qwen2-scalar"])
def test_pad_eos_items_read_before_their_closing_eos(shared_and_plain, assert_outputs_match, name):
    """pad = EOS: an item ending in EOS is read before it, even where that is the prefix's
    last token (a suffix of EOS only), as last_non_pad pooling reads the unshared rows."""
    shared, plain = shared_and_plain(name)
    eos = shared.encoder.tokenizer.eos_token_id
    assert eos == shared.config.pad_token_id
    prefix, body = filler(shared, P, 11), filler(shared, 6, 12)
    items = [TokenIds(tuple(prefix + body + [eos])), TokenIds(tuple(prefix + [eos])),
             TokenIds(tuple(prefix + body[:2] + [eos, eos])), TokenIds(tuple(prefix + body))]
    assert_shared_agrees(shared, plain, items, assert_outputs_match)
    at_eos = shared.score(items[1:2])[0].score
    assert at_eos == pytest.approx(plain.score([TokenIds(tuple(prefix))])[0].score, abs=1e-5)


def test_mixed_batches_two_groups_and_a_prefix_too_short(shared_and_plain, assert_outputs_match):
    """Two prompts beginning with the same 35-token system prompt are two groups, each
    sharing its whole prompt, not one sharing the system prompt; a 20-token common prefix
    is not shared at all (the batch runs unshared, and agrees)."""
    shared, plain = shared_and_plain("llama-scalar")
    system = filler(shared, 35, 13)
    first, second = system + filler(shared, 60, 14), system + filler(shared, 60, 15)
    items = [TokenIds(tuple(prompt + filler(shared, n, 16 + n))) for n in (3, 9, 14) for prompt in (first, second)]
    items.insert(3, TokenIds(tuple(filler(shared, 50, 30))))
    groups = prefix_groups([shared.encode(item).input_ids for item in items])
    assert sorted(groups, key=lambda g: g.members) == [Group((0, 2, 5), 95), Group((1, 4, 6), 95)]
    assert_shared_agrees(shared, plain, items, assert_outputs_match, groups=2)
    short = [TokenIds(tuple(filler(shared, 20, 17) + filler(shared, n, 18 + n))) for n in (5, 10, 15)]
    assert_shared_agrees(shared, plain, short, assert_outputs_match, groups=0)


def test_shared_with_packed_rest(shared_and_plain, assert_outputs_match):
    """A packed model's ungrouped items still run packed beside the shared group."""
    shared, plain = shared_and_plain("llama-gating", packed=True)
    assert shared.packed and plain.packed
    items = group_items(shared, filler(shared, P, 19)) + [TokenIds(tuple(filler(shared, 12, 20)), prompt_length=4)]
    assert_shared_agrees(shared, plain, items, assert_outputs_match)


def test_prefix_groups_rules():
    prompt = list(range(100, 100 + MIN_PREFIX + 1))
    assert prefix_groups([]) == prefix_groups([prompt + [1]]) == []
    # duplicates, and an item that is the others' prefix: each member keeps a token of its own
    assert prefix_groups([prompt + [1], prompt + [1]], group_cost=0) == [Group((0, 1), len(prompt))]
    assert prefix_groups([prompt + [1, 2], prompt, prompt + [3]], group_cost=0) == [Group((0, 1, 2), len(prompt) - 1)]
    assert prefix_groups([prompt + [1], prompt[:-1]], group_cost=0) == []  # it would share MIN_PREFIX - 1 tokens
    assert prefix_groups([prompt[:MIN_PREFIX - 1] + [1], prompt[:MIN_PREFIX - 1] + [2]], group_cost=0) == []
    assert prefix_groups([prompt + [1], [7] + prompt], group_cost=0) == []
    # a longer prefix shared by a few beats a shorter one shared by all, when it saves more
    longer = prompt + list(range(50))
    rows = [longer + [1], longer + [2], prompt + [3]]
    assert prefix_groups(rows, group_cost=0) == [Group((0, 1), len(longer))]
    more = rows + [prompt + [4], prompt + [5]]
    assert prefix_groups(more, group_cost=0) == [Group((0, 1, 2, 3, 4), len(prompt))]
    # a group pays only when it saves more than its extra forwards cost
    assert prefix_groups(rows) == [] and prefix_groups(more) == [Group((0, 1, 2, 3, 4), len(prompt))]
    assert prefix_groups(rows * 2, group_cost=0) == [Group((0, 1, 3, 4), len(longer)), Group((2, 5), len(prompt))]
    pairs = [[i] * MIN_PREFIX + [j] for i in range(3) for j in range(2)]
    assert prefix_groups(pairs, group_cost=0) == [Group((0, 1), MIN_PREFIX), Group((2, 3), MIN_PREFIX),
                                                  Group((4, 5), MIN_PREFIX)]
    assert prefix_groups(pairs) == [] and prefix_groups(pairs, group_cost=MIN_PREFIX - 1) != []
    many = [prompt + [i] for i in range(GROUP_COST // len(prompt) + 2)]
    assert prefix_groups(many) == [Group(tuple(range(len(many))), len(prompt))]


def test_gemma2_sliding_window_shares(tmp_path, assert_outputs_match):
    """Gemma 2's sliding-window layers (window 8 here) keep a windowed KV cache: with the
    prefix and the suffixes longer than the window, shared scores equal the unshared."""
    directory = skywork_gemma2(tmp_path / "gemma2")
    shared = RewardModel.load("gemma2", directory, share_prefix=True)
    plain = RewardModel.load("gemma2", directory, share_prefix=False)
    config = shared.backend.graph.model.config
    assert set(config.layer_types) == {"sliding_attention", "full_attention"} and config.sliding_window < 10
    prefix = filler(shared, P, 21)
    items = [TokenIds(tuple(prefix + filler(shared, n, 22 + n))) for n in (1, 7, 12, 20)] + [TextPair("Hi", "Yo")]
    assert_shared_agrees(shared, plain, items, assert_outputs_match)


def test_where_sharing_is_refused(tiny_model_dirs, tmp_path):
    """Auto shares on transformers' decoders only; true elsewhere is a load error saying why."""
    assert RewardModel.load("llama", tiny_model_dirs["llama-scalar"]).prefix_sharing is not None
    assert RewardModel.load("bert", tiny_model_dirs["bert-scalar"]).prefix_sharing is None
    with pytest.raises(ModelLoadError, match="share_prefix: true, .*an encoder attends both ways"):
        RewardModel.load("bert", tiny_model_dirs["bert-scalar"], share_prefix=True)
    with pytest.raises(ModelLoadError, match="only the torch backend shares prefixes"):
        ExportedGraphBackend.prefix_sharing.chosen(True, "onnx")
    assert ExportedGraphBackend.prefix_sharing.chosen(None, "onnx") is False
    directory = qwen25_math_prm(tmp_path / "prm")
    spec = {"kind": "process", "trust_remote_code": True, "unused_weights": ["lm_head."],
            "process": {"convention": "separator", "marker": "<extra_0>"}}
    assert RewardModel.load("prm", directory, spec=spec).prefix_sharing is None
    with pytest.raises(ModelLoadError, match="Qwen2ForProcessRewardModel is remote code"):
        RewardModel.load("prm", directory, spec=spec, share_prefix=True)


def test_model_config_share_prefix_reaches_the_model(tiny_model_dirs):
    for name, share, status in (("bert-scalar", True, "failed"), ("llama-scalar", False, "ready"),
                                ("llama-scalar", None, "ready")):
        config = ModelConfig(name="m", path=str(tiny_model_dirs[name]), share_prefix=share)
        runner = ModelRunner(config, Settings(models=[config]))
        runner.load()
        assert runner.status == status, runner.error
        if status == "failed":
            assert "share_prefix: true" in runner.error and "encoder" in runner.error
        else:
            assert (runner.model.prefix_sharing is None) == (share is False)
        runner.close()


def test_http_group_request_equals_one_item_per_request(served, load_tiny):
    """Through the server: a GRPO-style request (n responses to one prompt, as token ids)
    is scored by the shared path, with the numbers of each item sent alone."""
    names = ["llama-scalar", "llama-gating"]
    with served(names, grpc=False) as server:
        app, client = server.app, server.http
        for name in names:
            model = app.state.registry.runners[name].model
            assert model.spec.kind != ModelKind.process and model.prefix_sharing is not None
            items = [{"input_ids": list(item.input_ids), "prompt_length": item.prompt_length}
                     for item in group_items(load_tiny(name), filler(load_tiny(name), P, 23), seed=24)]
            before = model.prefix_sharing.groups
            group = client.post("/v1/score", json={"model": name, "items": items, "cache": "bypass"})
            assert group.status_code == 200, group.text
            assert model.prefix_sharing.groups > before
            for item, result in zip(items, group.json()["results"], strict=True):
                alone = client.post("/v1/score", json={"model": name, "items": [item], "cache": "bypass"})
                assert alone.status_code == 200, alone.text
                expected = alone.json()["results"][0]
                assert set(result) == set(expected) and result["num_tokens"] == expected["num_tokens"]
                for field in {"score", "dimensions", "gating_weights"} & set(expected):
                    assert result[field] == pytest.approx(expected[field], abs=1e-5, rel=0), field
