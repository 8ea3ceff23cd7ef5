"""`rank_watch.verdict`: when an idle sharded worker's ranks are taken as lost (issue 13).

A dead rank ends the worker at once; a silent one only once it has answered nothing for the
hung bound, counted from its first silence, and any answer starts the count again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.workers.engine import Engine
from mainsail.workers.parallel.ray_ranks import Liveness, LivenessQuery, ShardLost
from mainsail.workers.rank_watch import end_if_serving, verdict

HUNG = 60.0


def test_a_dead_rank_is_lost_at_once() -> None:
    reason, since = verdict(Liveness(dead=((1, "ActorDiedError: gone"),)), {}, 0.0, HUNG)
    assert reason == "rank 1 is dead: ActorDiedError: gone"
    assert since == {}


def test_a_silent_rank_is_lost_only_past_the_bound_from_its_first_silence() -> None:
    silent = Liveness(silent=(0,))
    reason, since = verdict(silent, {}, 100.0, HUNG)
    assert reason is None and since == {0: 100.0}
    reason, since = verdict(silent, since, 159.0, HUNG)
    assert reason is None and since == {0: 100.0}
    reason, _ = verdict(silent, since, 160.0, HUNG)
    assert reason == "rank 0 is hung: it answered no liveness query for 60 s"


def test_an_answer_starts_the_count_again() -> None:
    _, since = verdict(Liveness(silent=(0,)), {}, 0.0, HUNG)
    _, since = verdict(Liveness(), since, 50.0, HUNG)  # rank 0 answered
    assert since == {}
    reason, since = verdict(Liveness(silent=(0,)), since, 70.0, HUNG)
    assert reason is None and since == {0: 70.0}


@given(
    st.lists(st.sets(st.integers(0, 3), max_size=4), min_size=1, max_size=30),
    st.floats(0.1, 10.0),
)
def test_no_rank_is_called_hung_before_it_was_silent_for_the_bound(
    rounds: list[set[int]], step: float
) -> None:
    """Whatever the pattern of answers, a hung verdict names a rank whose run of silent
    rounds spans at least the bound, and a run that long always gets one."""
    hung = 5 * step
    since: dict[int, float] = {}
    run_start: dict[int, float] = {}
    for i, silent in enumerate(rounds):
        now = i * step
        run_start = {r: run_start.get(r, now) for r in silent}
        reason, since = verdict(Liveness(silent=tuple(sorted(silent))), since, now, hung)
        overdue = sorted(r for r, t in run_start.items() if now - t >= hung)
        if reason is None:
            assert not overdue
        else:
            assert overdue and reason.startswith(f"rank {overdue[0]} is hung")
            return


class _Runner:
    """The two calls `end_if_serving` makes of a `ShardedRunner`."""

    def __init__(self, serving: bool) -> None:
        self.serving = serving

    def serves_with(self, handles: object) -> bool:
        return self.serving

    def lose(self, reason: str) -> None:
        raise ShardLost(reason)


@dataclass
class _Engine:
    sharded: _Runner | None


QUERY = LivenessQuery(handles=(), refs=())


def test_a_verdict_ends_the_worker_while_the_ranks_asked_still_serve_it() -> None:
    with pytest.raises(ShardLost, match="rank 1 is hung"):
        end_if_serving(cast(Engine, _Engine(_Runner(serving=True))), QUERY, "rank 1 is hung")


def test_a_verdict_about_ranks_a_resize_replaced_since_is_dropped() -> None:
    end_if_serving(cast(Engine, _Engine(_Runner(serving=False))), QUERY, "rank 1 is hung")
    end_if_serving(cast(Engine, _Engine(None)), QUERY, "rank 1 is hung")  # engine unsharded
