"""A reward pipeline with one component of every kind the transports carry (a model, an
ensemble, two verifiable rules and a user function that fails, defaulted), and items with
ground truths, for the tests that serve it over each protocol."""

from __future__ import annotations

from pathlib import Path

NAME = "reward"
MEMBERS = ["llama-scalar", "qwen2-scalar"]
DEFAULT = -1.0  # a failed component's value under on_component_error 'default'
ITEMS = [
    {"prompt": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is \\boxed{5}.", "ground_truth": "5",
     "data_source": "arith", "extra_info": {"split": "test", "index": 0}},
    {"prompt": "What is 2 + 4?", "response": "2 + 4 = 5. The answer is \\boxed{5}.", "ground_truth": "6",
     "data_source": "arith"},
    {"prompt": "Name a colour.", "response": "Blue.", "ground_truth": "red"},
]
# Per item: whether the response has a boxed answer, and whether it is right.
FORMAT = [1.0, 1.0, 0.0]
ACCURACY = [1.0, 0.0, 0.0]


def pipeline(tmp: Path) -> dict:
    """The pipeline's configuration; its user function is a file under `tmp`."""
    function = tmp / "failing_reward.py"
    function.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                        "    raise ValueError('no score for this')\n")
    return {"name": NAME, "on_component_error": "default", "default_value": DEFAULT, "components": [
        {"name": "rm", "type": "model", "model": "llama-scalar", "weight": 0.5},
        {"name": "ens", "type": "ensemble", "models": MEMBERS, "weight": 0.25},
        {"name": "fmt", "type": "rule", "rule": "format", "params": {"must_match": ["\\\\boxed\\{"]}},
        {"name": "acc", "type": "rule", "rule": "math_verify", "weight": 2.0},
        {"name": "user", "type": "python", "function": f"{function}:compute_score", "weight": 0.0},
    ]}


def assert_same_result(got: dict, expected: dict, tol: float = 1e-6) -> None:
    """Two answers for one item agree: the same components, statuses and messages, the
    numbers within `tol` (a batch's composition moves a model's score in its last float bits)."""
    def close(a, b) -> bool:
        return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)

    assert close(got["score"], expected["score"]) and close(got.get("uncertainty"), expected.get("uncertainty"))
    assert got["components"].keys() == expected["components"].keys()
    for name, component in expected["components"].items():
        other = got["components"][name]
        assert (other["status"], other.get("message")) == (component["status"], component.get("message")), name
        assert close(other["value"], component["value"]) and close(other.get("spread"), component.get("spread")), name
