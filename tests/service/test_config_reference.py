"""docs/configuration.md is generated from the settings' schema, so it is committed as
`python -m service.config.reference` prints it, and every key it lists has a description."""

from __future__ import annotations

import re
import typing

import yaml
from paths import ROOT

from service.config import SECTIONS, ModelConfig, PipelineConfig, Settings
from service.config.flat import FLAT_KEYS
from service.config.pipeline import Component, Gate
from service.config.reference import render

DOC = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == render(), "regenerate: python -m service.config.reference > docs/configuration.md"


def test_every_key_is_described_and_listed():
    components = typing.get_args(typing.get_args(Component)[0])
    models = [ModelConfig, PipelineConfig, Gate, *components, *(SECTIONS.values())]
    undescribed = [f"{model.__name__}.{name}" for model in models for name, field in model.model_fields.items()
                   if not field.description and not (model in components and name == "type")]
    assert not undescribed
    text = DOC.read_text()
    for section, model in SECTIONS.items():
        assert all(f"| `{section}.{name}` |" in text for name in model.model_fields), section
    assert set(Settings.model_fields) == {"models", "pipelines", "default_model", *SECTIONS}


def test_every_flat_key_names_a_key_there_is():
    assert all(name in SECTIONS[section].model_fields for section, name in FLAT_KEYS.values())


def test_the_references_examples_are_valid_settings():
    examples = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert examples
    for example in examples:
        Settings(**yaml.safe_load(example))
