"""The `rewardserve` console script, run for real in a subprocess against a YAML config
that points at the tiny models: offline scoring of JSONL files, `models` and `serve`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from cli_helpers import cli_env, rewardserve_command
from http_helpers import (
    LONG_TEXT,
    assert_result_matches,
    free_port,
    poll,
    reference,
    sample_items,
    write_config,
)

from service.cli import main
from service.config.model import BUILTIN_DIR

CLI_MODELS = ["llama-helpsteer", "qwen2-prm", "llama-scalar"]
CHUNK_CROSSING_LINES = 270  # more than the CLI's 256-line chunk


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*rewardserve_command(), *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env())


@pytest.fixture(scope="module")
def config_file(tiny_model_dirs, tmp_path_factory) -> Path:
    dirs = {name: tiny_model_dirs[name] for name in CLI_MODELS}
    return write_config(tmp_path_factory.mktemp("cli") / "config.yaml", dirs, server={"port": 1, "grpc_port": 0},
                        batching={"max_batch_size": 4, "max_batch_tokens": 256})


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _read_jsonl(path_or_text: Path | str) -> list[dict]:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    return [json.loads(line) for line in text.splitlines()]


def test_score_file_writes_one_result_per_line_in_order(config_file, load_tiny, tmp_path):
    """Good lines of every form, cycled past the CLI's chunk size, scored like the
    reference; each bad line gets its own error record and stops nothing."""
    model = load_tiny("llama-helpsteer")
    good = [json.dumps(item) for item in sample_items(model)]
    bad = {
        3: ('{"prompt": "Hi", "response": ', "invalid_json", None),
        10: ('{"prompt": "Hi"}', "invalid_request", "response"),
        11: ('{"prompt": "Hi", "response": "Yes", "extra": 1}', "invalid_request", "extra"),
        120: ("5", "invalid_request", None),
        257: (json.dumps({"prompt": "Hi", "response": " ".join([LONG_TEXT] * 6)}), "input_too_long", None),
        263: ('{"input_ids": [1, 100000]}', "invalid_input", "input_ids[1]"),
    }
    lines = [bad[i][0] if i in bad else good[i % len(good)] for i in range(CHUNK_CROSSING_LINES)]
    output = tmp_path / "out.jsonl"

    done = run_cli("score", str(_write_lines(tmp_path / "in.jsonl", lines)), "--config", str(config_file),
                   "--model", "llama-helpsteer", "-o", str(output), "--quiet")

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == (f'{len(bad)} of {len(lines)} lines failed; see the records with an '
                                            f'"error" in {output}')
    records = _read_jsonl(output)
    assert [r["index"] for r in records] == list(range(len(lines)))
    expected = {line: reference(model, json.loads(line)) for line in good}
    for i, (line, record) in enumerate(zip(lines, records, strict=True)):
        if i in bad:
            _, code, field = bad[i]
            assert set(record) == {"index", "error"}, record
            assert (record["error"]["code"], record["error"]["field"]) == (code, field), record
            assert record["error"]["message"]
            assert "truncate='" not in record["error"]["message"], record
        else:
            assert "error" not in record, record
            assert_result_matches({k: v for k, v in record.items() if k != "index"}, expected[line])


def test_score_file_hint_names_the_flag_and_stdout_run_exits_1(config_file, tmp_path):
    """A line too long says how to cut it with the CLI's own flag; written to stdout, the
    good line's result still comes out and the summary names the output."""
    lines = [json.dumps({"prompt": "Hi", "response": "Hello!"}),
             json.dumps({"prompt": "Hi", "response": " ".join([LONG_TEXT] * 6)})]
    done = run_cli("score", str(_write_lines(tmp_path / "in.jsonl", lines)), "--config", str(config_file),
                   "--model", "llama-scalar", "--quiet")

    assert done.returncode == 1, done.stderr
    good, too_long = _read_jsonl(done.stdout)
    assert "score" in good and too_long["error"]["code"] == "input_too_long"
    assert "rerun with --truncate left" in too_long["error"]["message"]
    assert "--truncate right" in too_long["error"]["message"]
    assert done.stderr.splitlines()[-1] == '1 of 2 lines failed; see the records with an "error" in the output'


def test_score_file_aggregate_mean_on_process_model(config_file, load_tiny, tmp_path):
    """`--aggregate mean` makes each score the mean of its step rewards; no `-o` writes
    the results to stdout."""
    model = load_tiny("qwen2-prm")
    items = sample_items(model)
    done = run_cli("score", str(_write_lines(tmp_path / "steps.jsonl", [json.dumps(i) for i in items])),
                   "--config", str(config_file), "--model", "qwen2-prm", "--aggregate", "mean", "--quiet")

    assert done.returncode == 0, done.stderr
    records = _read_jsonl(done.stdout)
    assert [r["index"] for r in records] == list(range(len(items)))
    for record, item in zip(records, items, strict=True):
        rewards = reference(model, item).step_rewards
        assert record["step_rewards"] == pytest.approx(rewards, abs=1e-5, rel=0)
        assert record["score"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-5, rel=0)


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-scalar", "--aggregate", "mean"], "process models only"),
    (["--model", "nope"], "no model named 'nope'"),
])
def test_score_file_refuses_bad_arguments(args, message, config_file, tmp_path, monkeypatch, capsys):
    """Exits with a message, not a traceback, before writing anything (in-process: the
    subprocess path is covered above)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _write_lines(tmp_path / "in.jsonl", ['{"prompt": "Hi", "response": "Hello!"}'])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(source), "--config", str(config_file), "--quiet", *args])
    assert message in str(exit_info.value.code)
    assert capsys.readouterr().out == ""


def test_models_prints_name_kind_and_revision(config_file, load_tiny):
    done = run_cli("models", "--config", str(config_file))
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == CLI_MODELS
    for row in rows:
        info = load_tiny(row[0]).info
        assert row[1] == info.kind.value
        assert info.revision in row[-1].split()
        assert f"max_length={info.max_length}" in row


def test_serve_becomes_ready_and_stops_cleanly(config_file, load_tiny, tmp_path):
    """`serve --port P` overrides the config's port, turns ready within a bounded wait,
    scores, and shuts down gracefully on SIGTERM."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([*rewardserve_command(), "serve", "--config", str(config_file), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=cli_env())
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            def ready_or_dead() -> httpx.Response:
                assert process.poll() is None, f"server exited: {(tmp_path / 'serve.log').read_text()}"
                return client.get("/health/ready")

            ready = poll(ready_or_dead, lambda r: r.status_code == 200, timeout=120, interval=0.25)
            assert set(ready.json()["models"]) == set(CLI_MODELS)
            item = {"prompt": "Hi", "response": "Hello!"}
            scored = client.post("/v1/score", json={"model": "llama-scalar", "items": [item]})
            assert scored.status_code == 200, scored.text
            assert_result_matches(scored.json()["results"][0], reference(load_tiny("llama-scalar"), item))

        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


def test_help_and_version_load_no_model_stack():
    """`--help` and `--version` answer from the parser alone: neither torch, transformers nor
    numpy is imported while it is built, so they come back at once."""
    for flag in ("--help", "--version"):
        start = time.perf_counter()
        done = run_cli(flag, timeout=60)
        print(f"rewardserve {flag}: {time.perf_counter() - start:.2f}s")
        assert done.returncode == 0, done.stderr
    assert done.stdout == f"rewardserve {version('rewardserve')}\n"
    script = ("import json, sys; from service.cli import main\n"
              "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print(json.dumps(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=cli_env())
    modules = json.loads(loaded.stdout.splitlines()[-1])
    assert "usage: rewardserve" in loaded.stdout
    assert not [m for m in modules if m.split(".")[0] in ("torch", "transformers", "numpy", "fastapi")
                or m.startswith(("service.app", "service.engine", "models.convert"))]


def test_canary_record_refuses_to_write_into_the_package(tmp_path):
    """The embedded models live inside the installed package: --write there is refused in one
    line before anything is written (the bad line behind it would stop the run anyway)."""
    canary = BUILTIN_DIR / "minilm-harmless" / "canary.jsonl"
    before = canary.read_bytes()
    source = _write_lines(tmp_path / "items.jsonl", ["not json"])
    done = run_cli("canary-record", str(source), "--model", "minilm-harmless", "--write")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "inside the installed rewardserve package: copy" in done.stderr and "--config" in done.stderr
    assert canary.read_bytes() == before


def test_console_script_is_installed():
    assert shutil.which("rewardserve", path=str(Path(sys.executable).parent)), "rewardserve not on the venv PATH"


@pytest.mark.parametrize("family", ["armorm", "qwen2.5-math-prm"])
def test_convert_writes_files_any_user_may_read(family, tmp_path):
    """Under a umask that would make them private, what convert writes is 0644 (its new
    directory 0755): the server reading them may run as another user."""
    from model_cards.checkpoints import BUILDERS

    from models.convert import HEAD_FILENAME
    from models.spec import SPEC_FILENAME

    src, dst = BUILDERS[family](tmp_path / "checkpoint"), tmp_path / "converted"
    before = set(src.rglob("*"))
    previous = os.umask(0o077)
    try:
        main(["convert", family, str(src), str(dst)])
    finally:
        os.umask(previous)
    assert set(src.rglob("*")) == before  # nothing is written beside the checkpoint
    written = list(dst.rglob("*"))
    assert sorted(p.name for p in written) == sorted([HEAD_FILENAME, SPEC_FILENAME])
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(0o644) for p in written}
    assert oct(dst.stat().st_mode & 0o777) == oct(0o755)


def test_without_the_server_dependencies_the_command_names_the_serve_extra():
    """A plain install is the client, without torch: the command says, in one line and
    without a traceback, what to install (the real install is in test_client_install.py)."""
    script = ("import sys; sys.modules['torch'] = None; sys.argv = ['rewardserve', 'serve']; "
              "from service.launcher import main; main()")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=cli_env())
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "(torch)" in result.stderr and "pip install 'rewardserve[serve]'" in result.stderr
