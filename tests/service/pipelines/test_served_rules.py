"""Rules and user functions served in a pipeline, over a live server: a verifier that hangs,
spins, raises or kills its worker is answered `timeout`/`error` within its limit while the
other items score normally (the event loop answering throughout), the pool recovers, and the
served `math_verify` agrees with ProcessBench's human final-answer labels as math-verify does
in-process."""

from __future__ import annotations

import gzip
import json
import threading

import pytest
from math_verify import parse, verify
from paths import DATA

VERIFIER = '''
import os, time

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    mode = (extra_info or {}).get("mode")
    if mode == "hang":
        time.sleep(10**6)
    if mode == "spin":
        while True:
            pass
    if mode == "raise":
        raise RuntimeError("bad verifier")
    if mode == "exit":
        os._exit(3)
    return {"score": float(solution_str.strip() == ground_truth), "chars": len(solution_str)}
'''
MODES = ["hang", "spin", "raise", "exit"]


def items(modes: list[str | None]) -> list[dict]:
    return [{"prompt": "Say ok.", "response": "ok" if i % 2 == 0 else "no", "ground_truth": "ok",
             "extra_info": {"mode": mode}} for i, mode in enumerate(modes)]


def pipeline(tmp_path, **options) -> dict:
    path = tmp_path / "verifier.py"
    path.write_text(VERIFIER)
    return {"name": "checked", "components": [
        {"name": "rm", "type": "model", "model": "llama-scalar", "weight": 0.0},
        {"name": "exact", "type": "python", "function": f"{path}:compute_score", "timeout_s": 2.0}], **options}


def test_failing_verifiers_are_answered_in_their_limit_while_other_items_score(served, tmp_path):
    modes = [None, *MODES, None, None, None]
    config = pipeline(tmp_path, on_component_error="default", default_value=-1.0)
    with served(["llama-scalar"], pipelines=[config], rules={"workers": 2}) as server:
        live = []
        probe = threading.Thread(target=lambda: live.extend(
            server.http.get("/health/live").status_code for _ in range(20)))
        probe.start()
        response = server.http.post("/v1/score", json={"model": "checked", "items": items(modes)})
        probe.join(30)
        again = server.http.post("/v1/score", json={"model": "checked", "items": items([None] * 4)})
    assert live == [200] * 20
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for i, (mode, result) in enumerate(zip(modes, results, strict=True)):
        exact = result["components"]["exact"]
        if mode is None:
            assert exact == {"value": float(i % 2 == 0), "status": "ok"}
            assert result["score"] == float(i % 2 == 0)
            continue
        assert exact["status"] == ("timeout" if mode in ("hang", "spin") else "error"), (mode, exact)
        assert exact["value"] == -1.0 and result["score"] == -1.0
    assert "RuntimeError: bad verifier" in results[3]["components"]["exact"]["message"]
    assert "2" in results[1]["components"]["exact"]["message"]  # says its limit
    assert [r["components"]["exact"]["status"] for r in again.json()["results"]] == ["ok"] * 4


def test_a_failing_component_fails_its_item_alone_or_the_request(served, tmp_path):
    with served(["llama-scalar"], pipelines=[pipeline(tmp_path)], rules={"workers": 2}) as server:
        per_item = server.http.post("/v1/score", json={"model": "checked", "items": items([None, "raise", "hang"]),
                                                       "on_item_error": "item"}).json()["results"]
        whole = server.http.post("/v1/score", json={"model": "checked", "items": items([None, "raise"])})
    assert per_item[0]["score"] == 1.0
    assert per_item[1]["error"]["http_status"] == 500 and "bad verifier" in per_item[1]["error"]["message"]
    assert per_item[2]["error"]["http_status"] == 504 and per_item[2]["error"]["code"] == "component_timeout"
    assert whole.status_code == 500 and "items[1]" in whole.json()["error"]["message"]


def test_a_missing_ground_truth_is_a_clear_422(served):
    config = {"name": "math", "components": [{"name": "correct", "type": "rule", "rule": "math_verify"}]}
    with served(["llama-scalar"], pipelines=[config]) as server:
        response = server.http.post("/v1/score", json={"model": "math", "items": [
            {"prompt": "1+1?", "response": "2", "ground_truth": "2"}, {"prompt": "1+1?", "response": "2"}]})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "items[1].ground_truth"
    assert "math_verify" in response.json()["error"]["message"]


def processbench_items() -> list[tuple[dict, bool]]:
    with gzip.open(DATA / "gsm8k-test.jsonl.gz", "rt") as f:
        gold = {" ".join(r["question"].split()): r["answer"].split("####")[-1].strip() for r in map(json.loads, f)}
    records = json.loads((DATA / "processbench-gsm8k.json").read_text())
    return [({"prompt": r["problem"], "steps": r["steps"], "ground_truth": gold[" ".join(r["problem"].split())]},
             r["final_answer_correct"]) for r in records]


@pytest.mark.skipif(not (DATA / "processbench-gsm8k.json").is_file(), reason="needs ../shared/data")
def test_served_math_verify_agrees_with_processbench_as_in_process(served):
    labelled = processbench_items()
    config = {"name": "gsm8k", "components": [{"name": "correct", "type": "rule", "rule": "math_verify"}]}
    with served(["llama-scalar"], pipelines=[config], rules={"workers": 2}) as server:
        response = server.http.post("/v1/score", json={"model": "gsm8k", "items": [item for item, _ in labelled]},
                                    timeout=600)
    assert response.status_code == 200, response.text
    served_values = [r["components"]["correct"]["value"] for r in response.json()["results"]]
    in_process = [float(verify(parse(f"${item['ground_truth'].replace(',', '')}$"), parse("\n\n".join(item["steps"]))))
                  for item, _ in labelled]
    assert served_values == in_process
    agree = sum((value == 1.0) == label for value, (_, label) in zip(served_values, labelled, strict=True))
    print(f"served math_verify agrees with ProcessBench final_answer_correct on {agree} of {len(labelled)}")
    assert agree >= 394
