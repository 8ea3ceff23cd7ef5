"""Discrete-event cluster simulator: the real router code against real traces, at scale.

Why it exists: we cannot run a thousand GPUs, but users will. The simulator replays public
production traces (Mooncake, Azure) through the router's own scheduling profile and global KV
index, in front of simulated workers whose timing comes from a calibrated cost model, on a
virtual clock. It evaluates routing policies, plans capacity and demonstrates scale.

Layers (each one module): ``traces`` (loaders, rate/time scaling) → ``prompts`` (token ids and
block hashes synthesised from trace block ids) → ``cost`` (GPU cost model) → ``kvcache`` and
``worker`` (a continuous-batching engine on the virtual clock) → ``policies`` (baselines and the
adapter around the real router profile) → ``engine`` (event loop) → ``metrics``/``report``/
``plots`` → ``cli``. The simulator imports the router, never the workers.
"""
