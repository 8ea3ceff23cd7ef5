"""`mainsail up`'s expert-parallel autoscaler, fast tier: the operator's round against a
scripted router (`support.expert_router`), a fake clock, and the status file and event lines
it leaves; `mainsail status` renders them. The whole loop with real Ray, router and a sharded
Mixtral worker: tests/e2e/test_local_expert_autoscale.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.expert_router import ScriptedRouter

from mainsail.cli.local.expert_autoscale import LocalExpertScaler, read_status
from mainsail.cli.status_cmd import admin_token, render
from mainsail.cli.status_cmd import main as status_main
from mainsail.operator.expert_parallel_policy import ExpertSignals
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV, LOCAL_ADMIN_TOKEN_FILE

pytestmark = pytest.mark.unit

URLS = ["http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"]


def _spec(**ep: int) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "moe", "generate": "mixtral"},
            "engine": {"expertParallel": {"min": 1, "max": 4, "cooldownSeconds": 30,
                                          "scaleDownDelaySeconds": 60, **ep}},
        }
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _scaler(
    tmp_path: Path, router: ScriptedRouter, clock: Clock, said: list[str]
) -> LocalExpertScaler:
    return LocalExpertScaler(
        _spec(), URLS, "http://127.0.0.1:1", tmp_path / "status.json", router,
        interval=1.0, say=said.append, clock=clock,
    )  # fmt: skip


def _load(running: int, current: int, workers: int = 2) -> dict[str, ExpertSignals]:
    return {"unified": ExpertSignals(current, workers, running, 0, (5.0,) * 8)}


def test_load_moves_up_then_idle_down_after_the_delay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "run-token")  # what `mainsail up` generates
    router, clock = ScriptedRouter(), Clock()
    said: list[str] = []
    scaler = _scaler(tmp_path, router, clock, said)
    router.signals = _load(running=16, current=1)  # 8 per worker / 4 per rank: 2 ranks
    result = asyncio.run(scaler.run_pass())
    assert [(c.before, c.after, c.ok) for c in result.changes] == [(1, 2, True)]
    assert router.asked == [("run-token", "w0", 2), ("run-token", "w1", 2)]
    assert router.read == URLS  # every router replica read
    status = read_status(scaler.status_file)
    rec = status["expertParallel"]["unified"]
    assert (rec["current"], rec["target"], rec["recommended"]) == (1, 2, 2)
    assert "8.0 requests per worker" in rec["reason"] and rec["lastChange"]
    assert said == [status["events"][0]["reason"] + " " + status["events"][0]["message"]]
    assert said[0].startswith("ExpertsScaled unified: expertParallel 1 -> 2 (")

    # idle: the lower ask waits out the cooldown and the scale-down delay, then moves
    router.signals = _load(running=0, current=2)
    clock.now += 31
    held = asyncio.run(scaler.run_pass())
    assert not held.changes
    rec = read_status(scaler.status_file)["expertParallel"]["unified"]
    assert "holding (scale-down delay 60s)" in rec["reason"] and rec["lowerSince"]
    clock.now += 61
    down = asyncio.run(scaler.run_pass())
    assert [(c.before, c.after) for c in down.changes] == [(2, 1)]
    events = read_status(scaler.status_file)["events"]
    assert [e["message"].split(" (")[0] for e in events] == [
        "unified: expertParallel 1 -> 2",
        "unified: expertParallel 2 -> 1",
    ]


def test_the_admin_token_is_sent_and_a_refusal_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    router, clock = ScriptedRouter(), Clock()
    said: list[str] = []
    scaler = _scaler(tmp_path, router, clock, said)
    router.signals = _load(running=16, current=1)
    router.fail = "HTTP 409: worker is switching"
    result = asyncio.run(scaler.run_pass())
    assert [c.ok for c in result.changes] == [False]
    assert said[0].startswith("ExpertScaleFailed unified: expertParallel 1 -> 2")
    rec = read_status(scaler.status_file)["expertParallel"]["unified"]
    assert rec["target"] == 1 and "not changed: HTTP 409" in rec["reason"]
    router.fail = None
    clock.now += 5  # a failure backs off for a cooldown too
    assert not asyncio.run(scaler.run_pass()).changes
    clock.now += 30
    asyncio.run(scaler.run_pass())
    assert router.asked[0][0] == "s3cret"


def test_unreadable_routers_hold_and_say_so(tmp_path: Path) -> None:
    router, clock = ScriptedRouter(), Clock()
    said: list[str] = []
    scaler = _scaler(tmp_path, router, clock, said)
    router.signals = _load(running=4, current=1)
    asyncio.run(scaler.run_pass())
    router.signals = None
    result = asyncio.run(scaler.run_pass())
    assert result.unavailable and not result.changes
    status = read_status(scaler.status_file)
    assert status["expertParallel"]["unified"]["current"] == 1
    assert "signals unavailable" in status["expertParallel"]["unified"]["reason"]
    assert "connection refused" in status["unavailable"]


def test_partial_read_never_lowers(tmp_path: Path) -> None:
    router, clock = ScriptedRouter(), Clock()
    said: list[str] = []
    scaler = LocalExpertScaler(
        _spec(cooldownSeconds=0, scaleDownDelaySeconds=0), URLS, "http://127.0.0.1:1",
        tmp_path / "status.json", router, interval=1.0, say=said.append, clock=clock,
    )  # fmt: skip
    router.signals = _load(running=0, current=2)
    router.per_url = {URLS[1]: None}
    result = asyncio.run(scaler.run_pass())
    assert not result.changes
    assert "only 1/2 router replicas read" in result.status["unified"]["reason"]


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    plain = ModelDeploymentSpec.model_validate({"model": {"name": "m", "generate": "llama"}})
    with pytest.raises(ValueError, match=r"engine\.expertParallel"):
        LocalExpertScaler(plain, URLS, "u", tmp_path / "s", ScriptedRouter(), interval=1, say=print)
    with pytest.raises(ValueError, match="interval"):
        LocalExpertScaler(
            _spec(), URLS, "u", tmp_path / "s", ScriptedRouter(), interval=0, say=print
        )


def test_status_command_renders_file_and_refuses_other_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "run-token")
    router, clock = ScriptedRouter(), Clock()
    said: list[str] = []
    scaler = _scaler(tmp_path, router, clock, said)
    router.signals = _load(running=16, current=1)
    asyncio.run(scaler.run_pass())
    status = read_status(scaler.status_file)
    workers = [{"id": "w0", "role": "unified", "expert_parallel": 1, "expert_parallel_target": 2}]
    text = render(status, workers)
    assert "unified: ep 1 -> target 2 (recommended 2" in text
    assert "w0 [unified]: ep 1 (moving to 2)" in text
    assert "Normal ExpertsScaled: unified: expertParallel 1 -> 2" in text
    # the router at 127.0.0.1:1 is not there: the file is still shown
    assert status_main(scaler.status_file) == 0
    assert "not readable" in capsys.readouterr().out
    assert status_main(scaler.status_file, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["workers"] is None
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert status_main(other) == 2
    assert "no expertParallel" in capsys.readouterr().err


def test_status_sends_the_environments_token_else_the_runs_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mainsail status` opens the router's admin API with the token `mainsail up` wrote
    next to the status file, unless the environment names one."""
    status = tmp_path / "status.json"
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert admin_token(status) is None
    (tmp_path / LOCAL_ADMIN_TOKEN_FILE).write_text("from-file\n")
    assert admin_token(status) == "from-file"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert admin_token(status) == "from-env"
