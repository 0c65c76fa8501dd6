"""Models loaded, reloaded and unloaded while a live server answers (service/core/control.py),
through the admin routes over real HTTP on loopback: a reload under a steady stream of
requests loses none and answers each with one revision or the other, the new one from the
moment the reload returns (its cache entries, drift baseline and pipelines with it); a load
that fails leaves the model serving and says why; an unloaded model answers 404 and loads
again; the routes need an admin key."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from http_helpers import assert_error, served_input

from service.monitoring.baseline import BASELINE_FILENAME, SCORE, dimension_baseline, write_baseline

OLD, NEW = "llama-scalar", "qwen2-scalar"  # the served name, and the model its new directory holds
PAIR = {"prompt": "What is 2 + 2?", "response": "It is 4."}
WORKERS, MAX_REQUESTS, MAX_SECONDS = 4, 400, 120  # the background stream's bounds, per worker
PIPELINE = {"name": "rm-only", "components": [{"name": "rm", "type": "model", "model": OLD}]}
API_KEY, ADMIN_KEY = "k-control-api", "k-control-admin"


def score(http: httpx.Client, model: str = OLD) -> tuple[float, str]:
    """(score, revision) of PAIR."""
    response = http.post("/v1/score", json={"model": model, "items": [PAIR]})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["results"][0]["score"], body["revision"]


def control(http: httpx.Client, name: str, action: str, body: dict | None = None, **options) -> httpx.Response:
    return http.post(f"/v1/admin/models/{name}/{action}", json=body, **options)


class Stream:
    """Workers scoring PAIR until `stop` (bounded in count and time), each answer recorded as
    (sent after the reload returned, status, score, revision); `answered` holds whether an
    answer came before the reload returned (False) and after it (True)."""

    def __init__(self, url: str):
        self.url = url
        self.stop, self.reloaded = threading.Event(), threading.Event()
        self.answered = {False: threading.Event(), True: threading.Event()}

    def run(self) -> list[tuple[bool, int, float | None, str | None]]:
        answers = []
        deadline = time.monotonic() + MAX_SECONDS
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                after = self.reloaded.is_set()
                response = http.post("/v1/score", json={"model": OLD, "items": [PAIR]})
                body = response.json()
                answers.append((after, response.status_code, body["results"][0]["score"] if response.is_success
                                else None, body.get("revision")))
                self.answered[after].set()
        return answers

    def wait(self, after: bool) -> None:
        assert self.answered[after].wait(MAX_SECONDS), f"no answer {'after' if after else 'before'} the reload"


@pytest.fixture
def new_dir(tiny_model_dirs, tmp_path):
    """Another model's directory, with a drift baseline of its own."""
    directory = shutil.copytree(tiny_model_dirs[NEW], tmp_path / "rm-v2")
    write_baseline(directory / BASELINE_FILENAME,
                   {SCORE: dimension_baseline(OLD, "v2", "reload-test", SCORE, [0.1, 0.2, 0.3, 0.4])})
    return directory


def test_a_reload_under_load_loses_no_request(served, new_dir, load_tiny):
    with served([OLD], pipelines=[PIPELINE]) as server:
        http = server.http
        old_score, old_revision = score(http)
        assert http.get("/v1/drift").json()["models"][OLD]["baseline"] is None
        traffic = Stream(server.url)
        with ThreadPoolExecutor(WORKERS) as pool:
            workers = [pool.submit(traffic.run) for _ in range(WORKERS)]
            try:
                traffic.wait(after=False)
                reload = control(http, OLD, "load", {"path": str(new_dir)})
                traffic.reloaded.set()
                assert reload.status_code == 200, reload.text
                card = reload.json()
                new_score, new_revision = score(http)
                traffic.wait(after=True)
            finally:
                traffic.stop.set()
            answers = [answer for w in workers for answer in w.result()]

        assert (card["name"], card["status"], card["revision"]) == (OLD, "ready", new_revision)
        assert new_revision != old_revision
        assert new_score == pytest.approx(load_tiny(NEW).score([served_input(PAIR)])[0].score, abs=1e-4)
        assert new_score != pytest.approx(old_score, abs=1e-3)
        assert answers and all(status == 200 for _, status, _, _ in answers), answers
        for after, _, value, revision in answers:
            expected = {old_revision: old_score, new_revision: new_score}
            assert revision in ({new_revision} if after else set(expected)), (after, revision)
            assert value == pytest.approx(expected[revision], abs=1e-4)
        # the cache (on by default) held the old revision's entry for PAIR: the new one never reads it
        assert score(http) == (pytest.approx(new_score, abs=1e-6), new_revision)
        assert http.get("/v1/drift").json()["models"][OLD]["baseline"]["source"] == "reload-test"
        piped = http.post("/v1/score", json={"model": "rm-only", "items": [PAIR]}).json()
        assert piped["results"][0]["score"] == pytest.approx(new_score, abs=1e-6)
        # a pipeline's model stays
        assert_error(control(http, OLD, "unload"), 409, "model_in_use", "name")


def test_a_failed_load_keeps_the_model_serving_and_unload_then_load(served, tmp_path):
    with served([OLD, NEW]) as server:
        http = server.http
        before = score(http)
        missing = tmp_path / "nowhere"
        error = assert_error(control(http, OLD, "load", {"path": str(missing)}), 400, "load_failed")
        assert str(missing) in error["message"] and f"still serves revision {before[1]}" in error["message"]
        error = assert_error(control(http, OLD, "load", {"spec": {"kind": "no-such-kind"}}), 400, "load_failed")
        assert "no-such-kind" in error["message"]
        assert score(http) == before
        assert http.get("/health/ready").status_code == 200
        assert_error(control(http, OLD, "load", {"pathh": "x"}), 422, "invalid_request", "pathh")
        assert_error(control(http, OLD, "load", {"spec": "x"}), 422, "invalid_request", "spec")
        assert_error(control(http, "brand-new", "load"), 404, "model_not_found", "path")
        assert_error(control(http, "no-such-model", "reload"), 404, "model_not_found", "name")
        assert_error(control(http, "no-such-model", "unload"), 404, "model_not_found", "name")
        # a failed load of a new name serves nothing under it; readiness is untouched
        assert_error(control(http, "brand-new", "load", {"path": str(missing)}), 400, "load_failed")
        unknown = http.post("/v1/score", json={"model": "brand-new", "items": [PAIR]})
        assert_error(unknown, 404, "model_not_found", "model")

        assert control(http, OLD, "unload").json() == {"name": OLD, "status": "unloaded"}
        assert_error(http.post("/v1/score", json={"model": OLD, "items": [PAIR]}), 404, "model_not_found", "model")
        assert OLD not in {m["name"] for m in http.get("/v1/models").json()["models"]}
        assert http.get("/health/ready").status_code == 200
        assert_error(control(http, OLD, "unload"), 404, "model_not_found", "name")
        # loaded again as it was configured; and a new name beside it
        assert control(http, OLD, "load").json()["status"] == "ready"
        assert score(http) == (pytest.approx(before[0], abs=1e-6), before[1])
        path = http.get(f"/v1/models/{NEW}").json()["root"]
        added = control(http, "rm-copy", "load", {"path": path, "aliases": ["rm-alias"]})
        assert added.status_code == 200 and added.json()["revision"] == score(http, NEW)[1]
        assert score(http, "rm-alias") == score(http, NEW)
        assert_error(control(http, "rm-alias", "load", {"path": path}), 409, "name_taken", "name")
        assert {OLD, NEW, "rm-copy"} <= {m["name"] for m in http.get("/v1/models").json()["models"]}


def test_control_needs_an_admin_key(served):
    with served([OLD], auth={"api_keys": [API_KEY], "admin_api_keys": [ADMIN_KEY]}) as server:
        http = server.http
        assert_error(control(http, OLD, "reload"), 401, "unauthorized")
        for path in (f"/v1/admin/models/{OLD}/reload", f"/v2/repository/models/{OLD}/load"):
            assert_error(http.post(path, headers={"authorization": f"Bearer {API_KEY}"}), 403, "forbidden")
        assert control(http, OLD, "reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
