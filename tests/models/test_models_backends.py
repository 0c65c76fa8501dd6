"""The compute backends (models/backends): every backend the config can name has a factory,
each one honours the one protocol, what only some can do is said through it, and a backend's
own dependencies load only when it is chosen."""

from __future__ import annotations

import subprocess
import sys
import time
import typing

import pytest
from paths import ROOT

from models.backends import FACTORIES
from models.backends.base import Backend, ExportedGraphBackend, Support
from models.backends.config import BackendConfig
from models.errors import ModelLoadError

BACKEND_ONLY = ("onnx", "onnxruntime", "tritonclient")


def test_every_backend_type_the_config_names_has_a_factory():
    union = typing.get_args(typing.get_args(BackendConfig)[0])
    types = {typing.get_args(member.model_fields["type"].annotation)[0] for member in union}
    assert types == set(FACTORIES)


def test_the_torch_backend_honours_the_protocol_and_says_what_it_can_do(load_tiny):
    llama, bert = load_tiny("llama-scalar").backend, load_tiny("bert-scalar").backend
    assert isinstance(llama, Backend) and isinstance(bert, Backend)
    assert llama.graph is not None and (llama.identity, llama.files) == ("", ())
    assert llama.prefix_sharing == Support(None, by_default=True)
    assert llama.packing == Support(None, by_default=False)  # sdpa: packs only when asked
    assert bert.packing.missing and bert.prefix_sharing.missing  # an encoder does neither


def test_a_backend_running_the_exported_graph_says_it_cannot_pack_or_share():
    assert ExportedGraphBackend.graph is None
    with pytest.raises(NotImplementedError, match="only the torch backend runs packed"):
        ExportedGraphBackend().packed({})
    with pytest.raises(ModelLoadError, match="rm: packed: true: only the torch backend runs packed"):
        ExportedGraphBackend.packing.chosen(True, "rm: packed: true")
    assert ExportedGraphBackend.packing.chosen(None, "rm") is False


def test_the_forward_clock_is_the_backends(load_tiny):
    """On the host's cores the torch backend reads its thread's CPU time, which sleeping does
    not move; a backend that waits on another engine's threads or a server reads wall time."""
    model, exported = load_tiny("llama-scalar"), ExportedGraphBackend()
    cpu, wall = model.forward_clock(), exported.forward_clock()
    time.sleep(0.2)
    assert model.forward_clock() - cpu < 0.1 and exported.forward_clock() - wall >= 0.2


def test_backend_dependencies_load_only_with_their_backend():
    """Settings and the model layer load no backend's own packages, the settings not even torch."""
    loaded = "print(sorted({m.split('.')[0] for m in sys.modules} & %r))"
    code = "\n".join(["import sys", "import service.config", loaded % {"torch", *BACKEND_ONLY},
                      "import models.reward_model", loaded % set(BACKEND_ONLY)])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "[]"]
