"""The example configurations shipped in deploy/config must stay valid."""


import pytest
from paths import DEPLOY

from models.spec import RewardSpec
from service.config import DEFAULT_MODELS, Settings, load_settings

CONFIG_DIR = DEPLOY / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_is_valid(path):
    settings = load_settings(path)
    assert settings.models
    for model in settings.models:
        if model.spec is not None:
            assert RewardSpec.model_validate(model.spec).kind


def test_one_example_per_kind():
    kinds = set()
    for path in CONFIG_DIR.glob("*.yaml"):
        for model in load_settings(path).models:
            if model.spec is not None:
                kinds.add(RewardSpec.model_validate(model.spec).kind.value)
    assert kinds == {"scalar", "multi_objective", "process"}


def test_default_example_is_what_serve_runs_with_no_config():
    assert load_settings(CONFIG_DIR / "default.yaml") == Settings()
    assert [(m.name, m.path) for m in Settings().models] == [(m.name, m.path) for m in DEFAULT_MODELS]
