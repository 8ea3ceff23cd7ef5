"""End to end: `mainsail up` moves a sharded mixture-of-experts worker's expert-parallel
degree from the load, as the operator does on a cluster (issue 13: the degree is "realized by
`mainsail up` and by the operator").

Real parts: `mainsail up` as a user runs it (a child process, SIGTERM at the end), its local
Ray with the worker's rank actors, its router process, and the tiny Mixtral checkpoint. The
loop under test: the worker heartbeats its degree and expert load -> the router's /metrics ->
`mainsail up`'s round (the operator's policy and round, `expert_round`) -> `POST
/workers/<id>/experts` -> `Worker.ScaleExperts` -> the engine switches between two steps.

Before any load, each prompt is sent once, alone, at ep 1 (the undisturbed run). Then a
bounded client (at most ``CAP`` requests, ``IN_FLIGHT`` at a time, ``DEADLINE_S``) loads the
worker until the degree is 2; the worker then idles until the degree is 1 again. Every response
of the run must be complete and token-identical to the undisturbed one of its prompt; the
event lines, the status file, `mainsail status` and the router's /workers must say what
happened.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.stack import admin, running_stack

from mainsail.cli.local.expert_autoscale import read_status

pytestmark = pytest.mark.e2e

MODEL = "tiny-moe"
PROMPTS = ["Experts, assemble", "The router sends", "Once upon a mixture", "Gate and combine"]
CAP, IN_FLIGHT, MAX_TOKENS, DEADLINE_S = 60, 3, 32, 240.0

DEPLOYMENT = f"""\
apiVersion: mainsail.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: moe-up
spec:
  model: {{name: {MODEL}, generate: mixtral}}
  engine:
    maxModelLen: 256
    maxNumSeqs: 8
    expertParallel: {{min: 1, max: 2, targetRequestsPerRank: 1, cooldownSeconds: 5,
                     scaleDownDelaySeconds: 3}}
  pools:
    unified: {{replicas: 1}}
    cache: {{enabled: false}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("up-moe")
    spec = workdir / "moe.yaml"
    spec.write_text(DEPLOYMENT)
    args = ["-f", str(spec), "--http-port", "0", "--grpc-port", "0", "--autoscale-seconds", "1"]
    with running_stack(workdir, args) as endpoints:
        yield {**endpoints, "log": workdir / "up.log"}


def _ask(http: httpx.Client, prompt: str) -> tuple[str, list[str], int]:
    """(text, tokens, completion tokens) of one greedy completion that ignores EOS."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "logprobs": 1}  # fmt: skip
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return choice["text"], choice["logprobs"]["tokens"], resp.json()["usage"]["completion_tokens"]


def _record(stack: dict[str, Any]) -> dict[str, Any]:
    status = read_status(Path(stack["status_file"]))
    return dict(status["expertParallel"].get("unified") or {})


def _wait(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except (OSError, ValueError):
            got = None  # the status file is written by its first round
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(900)
def test_load_moves_the_degree_up_and_idle_down_token_identically(
    stack: dict[str, Any],
) -> None:
    assert stack["status_file"], stack
    with httpx.Client(base_url=stack["http"], timeout=300) as http:
        idle = _wait(lambda: (r := _record(stack)).get("current") == 1 and r, "ep 1 seen", 120)
        assert idle["target"] == 1, idle
        undisturbed = {p: _ask(http, p) for p in PROMPTS}  # alone, at ep 1
        assert all(n == MAX_TOKENS for _, _, n in undisturbed.values())

        got: list[tuple[str, tuple[str, list[str], int]]] = []
        deadline = time.monotonic() + DEADLINE_S
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            running: dict[concurrent.futures.Future[Any], str] = {}
            sent = 0
            while time.monotonic() < deadline and sent < CAP:
                for future in [f for f in running if f.done()]:
                    got.append((running.pop(future), future.result()))
                if _record(stack).get("current") == 2:
                    break
                while len(running) < IN_FLIGHT and sent < CAP:
                    prompt = PROMPTS[sent % len(PROMPTS)]
                    running[pool.submit(_ask, http, prompt)] = prompt
                    sent += 1
                time.sleep(0.3)
            for future in concurrent.futures.as_completed(running, timeout=300):
                got.append((running[future], future.result()))
        up = _record(stack)
        assert up.get("current") == 2 and up.get("target") == 2, up
        assert "requests per worker" in up["reason"] and up.get("lastChange"), up
        workers = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()[
            "data"
        ]
        assert [w["expert_parallel"] for w in workers] == [2], workers

        # idle: after the scale-down delay (3 s) and the cooldown (5 s) it goes back to 1
        down = _wait(lambda: (r := _record(stack)).get("current") == 1 and r, "ep 1 again", 180)
        assert down["target"] == 1 and "0.0 requests per worker" in down["reason"], down
        after = {p: _ask(http, p) for p in PROMPTS}  # back at ep 1, each alone

    assert got, "the load sent nothing"
    for prompt, answer in [*got, *after.items()]:
        assert answer == undisturbed[prompt], (prompt, answer, undisturbed[prompt])

    events = read_status(Path(stack["status_file"]))["events"]
    moves = [e["message"].split(" (")[0] for e in events if e["reason"] == "ExpertsScaled"]
    assert moves[:2] == ["unified: expertParallel 1 -> 2", "unified: expertParallel 2 -> 1"]
    assert all(e["type"] == "Normal" for e in events), events
    log = Path(stack["log"]).read_text(errors="replace")
    assert "ExpertsScaled unified: expertParallel 1 -> 2 (" in log
    assert "ExpertsScaled unified: expertParallel 2 -> 1 (" in log
    shown = subprocess.run(
        [sys.executable, "-m", "mainsail.cli.main", "status", stack["status_file"]],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "unified: ep 1 -> target 1" in shown, shown
    assert "moe-up-unified-0 [unified]: ep 1" in shown, shown
    assert "Normal ExpertsScaled: unified: expertParallel 2 -> 1" in shown, shown
