"""The Mainsail inference engine: paged KV cache, continuous batching, chunked prefill.

Public surface (kept small and stable; the worker service and Ray actor are built on it):
`Engine` (synchronous, one thread), `AsyncEngine` (asyncio streams over an engine thread),
`EngineConfig`, `EngineRequest`, `SamplingParams`, `RequestOutput`, `KVEvent`,
`EngineMetrics`, `EngineInputError`. See docs/engine.md.

The names are imported when first used (PEP 562 ``__getattr__``), not with the package:
a rank actor of a sharded worker imports only ``model_runner`` from here, and importing
the whole engine with it (the KV tier and its Redis client, the async front) cost every
rank started while a worker serves about a second of CPU (docs/parallelism.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mainsail.workers.engine.async_engine import AsyncEngine
    from mainsail.workers.engine.config import EngineConfig
    from mainsail.workers.engine.engine import Engine, StepShape
    from mainsail.workers.engine.errors import EngineInputError
    from mainsail.workers.engine.kv_events import KVEvent
    from mainsail.workers.engine.kv_migration import ExportedKV, MigratedState, MigrationError
    from mainsail.workers.engine.metrics import EngineMetrics, Histogram
    from mainsail.workers.engine.request import EngineRequest, FinishReason, RequestOutput
    from mainsail.workers.engine.sampling_params import SamplingParams
    from mainsail.workers.engine.tokenizer import Tokenizer
    from mainsail.workers.models.errors import CheckpointError

_WHERE = {
    "AsyncEngine": "mainsail.workers.engine.async_engine",
    "CheckpointError": "mainsail.workers.models.errors",
    "Engine": "mainsail.workers.engine.engine",
    "EngineConfig": "mainsail.workers.engine.config",
    "EngineInputError": "mainsail.workers.engine.errors",
    "EngineMetrics": "mainsail.workers.engine.metrics",
    "EngineRequest": "mainsail.workers.engine.request",
    "ExportedKV": "mainsail.workers.engine.kv_migration",
    "FinishReason": "mainsail.workers.engine.request",
    "Histogram": "mainsail.workers.engine.metrics",
    "KVEvent": "mainsail.workers.engine.kv_events",
    "MigratedState": "mainsail.workers.engine.kv_migration",
    "MigrationError": "mainsail.workers.engine.kv_migration",
    "RequestOutput": "mainsail.workers.engine.request",
    "SamplingParams": "mainsail.workers.engine.sampling_params",
    "StepShape": "mainsail.workers.engine.engine",
    "Tokenizer": "mainsail.workers.engine.tokenizer",
}

__all__ = [
    "AsyncEngine",
    "CheckpointError",
    "Engine",
    "EngineConfig",
    "EngineInputError",
    "EngineMetrics",
    "EngineRequest",
    "ExportedKV",
    "FinishReason",
    "Histogram",
    "KVEvent",
    "MigratedState",
    "MigrationError",
    "RequestOutput",
    "SamplingParams",
    "StepShape",
    "Tokenizer",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
