"""Loading model directories: what is refused, what is inferred, and the revision
fingerprint that changes with anything that can change a score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from models.errors import ModelLoadError
from models.inputs import TextPair
from models.reward_model import RewardModel
from models.spec import SPEC_FILENAME, ModelKind, RewardSpec, load_spec

ITEM = TextPair("What is 3 plus 4?", "It is 7.")


@pytest.fixture
def copy_model(tiny_model_dirs, tmp_path):
    """A private copy of a tiny model directory, free to be edited by the test."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(tiny_model_dirs[name], target)
        return target

    return copy


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def test_pickle_only_directory_is_refused(copy_model):
    model_dir = copy_model("llama-scalar")
    weights = model_dir / "model.safetensors"
    torch.save(load_file(str(weights)), model_dir / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="safetensors"):
        RewardModel.load("pickled", model_dir)


def test_remote_code_is_not_run_by_default(copy_model, tmp_path):
    """A config that points at custom code gets the library's own class unless the spec
    says trust_remote_code; the custom module is never imported."""
    assert RewardSpec(kind="scalar").trust_remote_code is False
    model_dir = copy_model("llama-scalar")
    sentinel = tmp_path / "remote_code_ran"
    (model_dir / "custom_model.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('ran')\n"
        "from transformers import LlamaForSequenceClassification\n"
        "class CustomModel(LlamaForSequenceClassification):\n    pass\n"
    )
    edit_json(model_dir / "config.json", auto_map={"AutoModelForSequenceClassification": "custom_model.CustomModel"})
    model = RewardModel.load("custom", model_dir)
    assert model.info.architecture == "LlamaForSequenceClassification"
    assert not sentinel.exists()


def test_single_label_sequence_classifier_without_spec_is_scalar(load_tiny, tiny_model_dirs):
    model_dir = tiny_model_dirs["llama-scalar"]
    assert not (model_dir / SPEC_FILENAME).exists()
    assert load_spec(model_dir) == RewardSpec(kind=ModelKind.scalar)
    model = load_tiny("llama-scalar")
    assert model.info.kind == ModelKind.scalar
    assert model.info.architecture == "LlamaForSequenceClassification"


def test_two_label_classifier_without_spec_is_not_guessed(copy_model):
    model_dir = copy_model("llama-scalar")
    edit_json(model_dir / "config.json", id2label={"0": "bad", "1": "good"}, label2id={"bad": 0, "good": 1})
    with pytest.raises(ModelLoadError, match=SPEC_FILENAME):
        load_spec(model_dir)


@pytest.mark.parametrize("name,spec", [
    ("llama-helpsteer", {"kind": "scalar"}),
    ("llama-scalar", {"kind": "multi_objective", "multi_objective": {
        "dimensions": ["a", "b", "c"], "weights": {"a": 1.0}}}),
    ("llama-gating", {"kind": "multi_objective", "head_file": "reward_head.safetensors", "multi_objective": {
        "dimensions": ["a", "b", "c", "d"], "aggregate": "gating"}}),
])
def test_head_width_must_fit_the_spec(tiny_model_dirs, name, spec):
    with pytest.raises(ModelLoadError, match="outputs"):
        RewardModel.load(name, tiny_model_dirs[name], spec=spec)


def test_unknown_dtype_is_refused(tiny_model_dirs):
    with pytest.raises(ModelLoadError, match="dtype"):
        RewardModel.load("x", tiny_model_dirs["llama-scalar"], dtype="float8")


def test_spec_pointing_at_a_backbone_elsewhere(tiny_model_dirs, load_tiny, tmp_path):
    wrapper = tmp_path / "wrapper"
    wrapper.mkdir()
    backbone = tiny_model_dirs["llama-scalar"]
    (wrapper / SPEC_FILENAME).write_text(yaml.safe_dump({"kind": "scalar", "backbone": str(backbone)}))
    wrapped = RewardModel.load("wrapped", wrapper)
    direct = load_tiny("llama-scalar")
    assert wrapped.score([ITEM])[0].score == pytest.approx(direct.score([ITEM])[0].score, abs=1e-6)
    assert wrapped.revision != direct.revision  # the spec differs


# ---- revision fingerprint ----------------------------------------------------------------


def revision(model_dir: Path, spec: dict | None = None) -> str:
    return RewardModel.load("fp", model_dir, spec=spec).revision


def test_revision_is_stable_across_loads(copy_model, tiny_model_dirs, load_tiny):
    model_dir = copy_model("llama-scalar")
    first = revision(model_dir)
    assert first.startswith("sha256:")
    assert revision(model_dir) == first
    assert revision(tiny_model_dirs["llama-scalar"]) == first  # content, not location
    (model_dir / "README.md").write_text("notes that cannot change a score")
    assert revision(model_dir) == first
    assert load_tiny("qwen2-scalar").revision != first


def test_revision_changes_with_weights(copy_model):
    model_dir = copy_model("llama-scalar")
    before = revision(model_dir)
    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["score.weight"] = tensors["score.weight"] + 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert revision(model_dir) != before


def test_revision_changes_with_head_file(copy_model):
    model_dir = copy_model("llama-gating")
    before = revision(model_dir)
    head_file = model_dir / "reward_head.safetensors"
    tensors = load_file(str(head_file))
    tensors["gating_temperature"] = torch.tensor(0.7)
    save_file(tensors, str(head_file))
    assert revision(model_dir) != before


def drop_last_merge(path: Path) -> None:
    tokenizer = json.loads(path.read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]
    path.write_text(json.dumps(tokenizer))


def shorten_limit(path: Path) -> None:
    edit_json(path, model_max_length=128)


def change_template(path: Path) -> None:
    path.write_text(path.read_text().replace("\n\n", "\n"))


@pytest.mark.parametrize("filename,change", [
    ("tokenizer.json", drop_last_merge),
    ("tokenizer_config.json", shorten_limit),
    ("chat_template.jinja", change_template),
])
def test_revision_changes_with_tokenizer_files(copy_model, filename, change):
    model_dir = copy_model("llama-scalar")
    before = revision(model_dir)
    change(model_dir / filename)
    assert revision(model_dir) != before


def test_revision_changes_with_spec(copy_model):
    model_dir = copy_model("llama-helpsteer")
    before = revision(model_dir)
    spec = yaml.safe_load((model_dir / SPEC_FILENAME).read_text())
    spec["multi_objective"]["weights"]["verbosity"] = -0.3
    assert revision(model_dir, spec=spec) != before
    (model_dir / SPEC_FILENAME).write_text(yaml.safe_dump(spec))
    changed = revision(model_dir)
    assert changed != before
    assert revision(model_dir, spec=spec) == changed  # inline or in the file, same spec


def test_spec_file_edits_that_change_no_score_keep_the_revision(copy_model):
    """A comment or a new process.threshold in reward_spec.yaml: the revision (and so the
    cache, drift baseline and golden set recorded for it) stays; a scoring field moves it."""
    model_dir = copy_model("qwen2-prm")
    path = model_dir / SPEC_FILENAME
    before = revision(model_dir)
    spec = yaml.safe_load(path.read_text())
    spec["process"]["threshold"] = 0.8
    path.write_text("# recalibrated\n" + yaml.safe_dump(spec))
    assert revision(model_dir) == before
    spec["process"]["aggregate"] = "mean"
    path.write_text(yaml.safe_dump(spec))
    assert revision(model_dir) != before


@pytest.mark.parametrize("change", [{"marker": "two words"}, {"good_token": "plus sign"}])
def test_process_tokens_must_be_single_tokens(tiny_model_dirs, change):
    """A spec naming a marker or candidate token the tokenizer splits cannot be served:
    a load error, not a request error."""
    model_dir = tiny_model_dirs["mistral-prm"]
    spec = yaml.safe_load((model_dir / SPEC_FILENAME).read_text())
    spec["process"].update(change)
    with pytest.raises(ModelLoadError, match="single token"):
        RewardModel.load("split", model_dir, spec=spec)


# ---- fail closed: every tensor of the checkpoint and the head file accounted for ----------


def rewrite_weights(model_dir: Path, edit) -> None:
    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_weight_is_a_load_error_naming_it(copy_model):
    """A tensor the model class needs and the checkpoint lacks would be randomly
    initialised: the load fails and names it."""
    model_dir = copy_model("llama-scalar")
    rewrite_weights(model_dir, lambda t: t.pop("score.weight"))
    with pytest.raises(ModelLoadError, match=r"missing \(would be random\): score\.weight"):
        RewardModel.load("headless", model_dir)


def test_unread_weight_is_a_load_error_naming_it(copy_model):
    """A tensor the model class does not read means the checkpoint is not the model the
    class builds (a head of another layout, say): the load fails and names it."""
    model_dir = copy_model("llama-scalar")
    rewrite_weights(model_dir, lambda t: t.update({"score.extra.weight": torch.zeros(2, 2)}))
    with pytest.raises(ModelLoadError, match=r"unexpected \(not read\): score\.extra\.weight"):
        RewardModel.load("extra", model_dir)


def test_unused_weights_names_what_may_stay_unread(copy_model, load_tiny):
    """An LM head the reward model never reads, named in the spec: loads, same scores."""
    model_dir = copy_model("llama-scalar")
    rewrite_weights(model_dir, lambda t: t.update({"lm_head.weight": torch.zeros(2, 2)}))
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        RewardModel.load("with-lm-head", model_dir)
    model = RewardModel.load("with-lm-head", model_dir, spec={"kind": "scalar", "unused_weights": ["lm_head."]})
    expected = load_tiny("llama-scalar").score([ITEM])[0].score
    assert model.score([ITEM])[0].score == pytest.approx(expected, abs=1e-6)


def test_mis_shaped_weight_is_a_load_error(copy_model):
    model_dir = copy_model("llama-scalar")
    rewrite_weights(model_dir, lambda t: t.update({"score.weight": torch.zeros(1, 3)}))
    with pytest.raises(ModelLoadError, match="score.weight"):
        RewardModel.load("mis-shaped", model_dir)


def test_head_file_tensor_it_does_not_read_is_a_load_error(copy_model):
    model_dir = copy_model("llama-gating")
    head = model_dir / "reward_head.safetensors"
    tensors = load_file(str(head))
    tensors["gating.logit_scale"] = torch.tensor([2.0])  # the remote code's name, not the head file's
    save_file(tensors, str(head))
    with pytest.raises(ModelLoadError, match=r"gating\.logit_scale"):
        RewardModel.load("unconverted", model_dir)


def test_checkpoint_of_another_head_class_is_a_load_error(tiny_model_dirs):
    """A token-classification PRM loaded as a scalar sequence classifier: its head tensors
    do not fit, which is reported instead of a model with a fresh head."""
    with pytest.raises(ModelLoadError, match=r"score\.bias"):
        RewardModel.load("wrong-kind", tiny_model_dirs["qwen2-prm"], spec={"kind": "scalar"})


# ---- backbone_weights: a fine-tune shipped as the tensors it changed ----------------------


def test_backbone_weights_replace_the_checkpoints_tensors(copy_model):
    """Tensors laid over the checkpoint score exactly as a checkpoint holding them, and the
    revision follows the file."""
    base = copy_model("llama-scalar")
    tuned = shutil.copytree(base, base.parent / "tuned")
    original = load_file(str(base / "model.safetensors"))
    changed = {"score.weight": original["score.weight"] * 2, "model.norm.weight": original["model.norm.weight"] + 0.1}
    rewrite_weights(tuned, lambda t: t.update(changed))
    save_file(changed, str(base / "tuned.safetensors"))
    spec = {"kind": "scalar", "backbone_weights": "tuned.safetensors"}
    overlaid = RewardModel.load("overlaid", base, spec=spec)
    expected = RewardModel.load("tuned", tuned).score([ITEM])[0].score
    assert overlaid.score([ITEM])[0].score == pytest.approx(expected, abs=1e-6)
    assert expected != pytest.approx(RewardModel.load("base", base).score([ITEM])[0].score, abs=1e-4)
    before = overlaid.revision
    assert before != revision(base)
    save_file({"score.weight": original["score.weight"] * 3}, str(base / "tuned.safetensors"))
    assert revision(base, spec) != before


@pytest.mark.parametrize("tensors,match", [
    ({"score.extra": torch.zeros(2)}, r"not in the backbone: score\.extra"),
    ({"score.weight": torch.zeros(1, 3)}, r"shape mismatch: score\.weight \(1, 3\)"),
    (None, "does not exist"),
])
def test_backbone_weights_that_do_not_fit_are_a_load_error(copy_model, tensors, match):
    """A tensor the backbone lacks would go unread, one of another shape cannot be laid over;
    a missing file is no fine-tune at all: each fails the load instead of serving the base."""
    model_dir = copy_model("llama-scalar")
    if tensors is not None:
        save_file(tensors, str(model_dir / "tuned.safetensors"))
    with pytest.raises(ModelLoadError, match=match):
        RewardModel.load("tuned", model_dir, spec={"kind": "scalar", "backbone_weights": "tuned.safetensors"})
