"""Model shards on Ray: tensor parallelism, expert parallelism and elastic expert parallelism.

`ShardedRunner` is the engine's runner when a model is split: ``tp`` rank actors in one
placement group hold attention (by head, with its KV cache), MLP rows and vocabulary slices;
a mixture-of-experts model's experts are placed whole on ``ep`` ranks (expert-only ranks
when ``ep > tp``), and ``ep`` can change while serving. Ranks meet in `torch.distributed`
(gloo on CPU, NCCL on CUDA). The pure rules are in `plan.py`. Imported only when a sharded
engine starts, so an unsharded worker never imports Ray through it. See docs/parallelism.md.
"""

from mainsail.workers.parallel.plan import ShardingError
from mainsail.workers.parallel.ray_ranks import ShardLost
from mainsail.workers.parallel.sharded_runner import Resize, ShardedRunner

__all__ = ["Resize", "ShardLost", "ShardedRunner", "ShardingError"]
