"""Back-pressure sized by work (flowdpo/run/common.py `TrainerPace`): finished shards may wait for the
trainer about `rollout.pendingSeconds`, i.e. ceil(trainer shards/s x pendingSeconds) of them, at least 1 and
at most `rollout.maxPendingShards`. The worker loop that uses it: tests/unit/test_worker_loop.py."""

from flowdpo.run.common import TrainerPace
from flowdpo.spec import RolloutSpec


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_allowed_waiting_shards_follow_the_trainers_rate():
    rollout = RolloutSpec(max_pending_shards=16, pending_seconds=100)
    clock = Clock()
    pace = TrainerPace(clock=clock)
    pace.observe(0)
    assert pace.shards_per_second() is None and pace.allowed(rollout) == 16  # unmeasured: the cap
    for c in range(1, 5):  # the trainer consumes a shard every 20 s: 0.05 shards/s
        clock.t += 20
        pace.observe(c)
        pace.observe(c)  # reading the same position again is no move
    assert abs(pace.shards_per_second() - 0.05) < 1e-9
    assert pace.allowed(rollout) == 5  # 0.05 x 100 s
    clock.t += 380  # the trainer stalls: its rate falls while it stalls, and so does the allowance
    assert pace.allowed(rollout) == 1
    fast = TrainerPace(clock=clock)
    fast.observe(0)
    clock.t += 1
    fast.observe(10)
    assert fast.allowed(rollout) == 16  # 10 shards/s x 100 s, capped
