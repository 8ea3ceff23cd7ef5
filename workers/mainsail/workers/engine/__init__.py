"""The Mainsail inference engine: paged KV cache, continuous batching, chunked prefill.

Public surface (kept small and stable; the worker service and Ray actor are built on it):
`Engine` (synchronous, one thread), `AsyncEngine` (asyncio streams over an engine thread),
`EngineConfig`, `EngineRequest`, `SamplingParams`, `RequestOutput`, `KVEvent`,
`EngineMetrics`, `EngineInputError`. See docs/engine.md.
"""

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
