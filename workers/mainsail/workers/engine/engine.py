"""`Engine`: one model, one paged KV cache, one scheduler; `step()` advances every request.

Single-threaded by design (the `AsyncEngine` runs it on its own thread): `add_request` checks
and queues a request, `step` schedules a batch, runs the model once, samples, detokenizes
and returns one `RequestOutput` per request that produced a token (or finished). A failure
inside a step finishes that step's requests with ``finish_reason="error"``; the engine and
its other requests carry on. Bad requests are refused by `check_request` with
`EngineInputError` before they touch any state. The LoRA adapters of ``config.adapters`` are
loaded at start and stay resident; each request runs with the adapter it names (or none).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mainsail.spec.kv_cost import FetchCostModel
from mainsail.workers.engine.block_allocator import BlockAllocator
from mainsail.workers.engine.config import EngineConfig
from mainsail.workers.engine.detokenizer import Detokenizer, DetokenizerState
from mainsail.workers.engine.errors import EngineFatalError, EngineInputError
from mainsail.workers.engine.kv_adoption import KVAdoptions, PreparedAdoption
from mainsail.workers.engine.kv_cache_manager import KVCacheManager
from mainsail.workers.engine.kv_events import KVEvent
from mainsail.workers.engine.kv_migration import ExportedKV, KVExports, MigratedState
from mainsail.workers.engine.kv_tier_link import TierLink
from mainsail.workers.engine.metrics import EngineMetrics, MetricsRecorder
from mainsail.workers.engine.model_runner import ModelRunner, StepInput, StepRunner
from mainsail.workers.engine.request import EngineRequest, FinishReason, RequestOutput
from mainsail.workers.engine.request_checks import EngineLimits, check_request
from mainsail.workers.engine.sampler import SampleRequest, sample
from mainsail.workers.engine.scheduler import Scheduler
from mainsail.workers.engine.sequence import Sequence
from mainsail.workers.engine.sharding import between_steps, scale_experts, start_sharded_runner
from mainsail.workers.engine.tokenizer import Tokenizer
from mainsail.workers.kvtier import BlockCodec, kv_namespace
from mainsail.workers.models import AdapterSet, load_model, load_model_config

if TYPE_CHECKING:
    from mainsail.workers.parallel import ShardedRunner

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepShape:
    """What the last step computed and how long it took: the simulator's cost-model inputs.

    Why the engine records it: fitting the simulator's step-time model to steps taken under a
    real replay (their real mix of prefill chunks and decodes, on the machine as loaded at the
    time) predicts latency far better than synthetic back-to-back calibration batches; see
    docs/simulator.md. ``prefill`` holds ``(new tokens, tokens already computed)`` per prefill
    chunk, ``decode_contexts`` the context length of each decoding sequence.
    """

    prefill: tuple[tuple[int, int], ...]
    decode_contexts: tuple[int, ...]
    seconds: float


class Engine:
    """Serves one checkpoint directory (Hugging Face layout) on ``config.device``."""

    def __init__(
        self,
        model_dir: Path,
        config: EngineConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model_dir = Path(model_dir)
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        self.model_config = load_model_config(self.model_dir)
        if self.config.max_model_len > self.model_config.max_position_embeddings:
            raise ValueError(
                f"max_model_len {self.config.max_model_len} exceeds the model's "
                f"max_position_embeddings {self.model_config.max_position_embeddings}"
            )
        self.model_name = self.model_dir.name
        self.tokenizer = Tokenizer(
            self.model_dir, self.model_config.eos_token_ids, self.model_config.vocab_size
        )
        self._eos = set(self.tokenizer.eos_token_ids)
        blocks = self.config.total_kv_blocks
        self._allocator = BlockAllocator(blocks)
        self._kv = KVCacheManager(self._allocator, self.config.block_size)
        self._scheduler = Scheduler(
            self._kv, self.config.max_num_seqs, self.config.max_batched_tokens
        )
        self._adapters: AdapterSet | None = None
        self._runner: StepRunner
        self._sharded: ShardedRunner | None = None
        if self.config.sharded:
            self._sharded, self._adapters = start_sharded_runner(
                self.model_dir, self.model_config, self.config, blocks
            )
            self._runner = self._sharded
        else:
            model, _ = load_model(self.model_dir, self.config.dtype, self.config.device)
            if self.config.adapters:
                self._adapters = AdapterSet(model)
                for name, path in sorted(self.config.adapters.items()):
                    self._adapters.load(name, Path(path))
            self._runner = ModelRunner(
                model, self.model_config, blocks, self.config.block_size, self._adapters
            )
        self._tier: TierLink | None = None
        if self.config.kv_tier is not None:
            self._tier = TierLink.connect(
                self.config, self.model_dir, self.model_config, self._runner, self._kv
            )
        self._clock = clock
        self._rng = rng or random.Random()
        self._order = itertools.count()
        self._seqs: dict[str, Sequence] = {}
        self._pending: list[RequestOutput] = []
        self._metrics = MetricsRecorder()
        # The prefill rate for the one KV cost model (`mainsail.spec.kv_cost`), measured with
        # or without a tier: the router prices cached prefixes with it.
        self._prefill = FetchCostModel(block_bytes=0, block_size=self.config.block_size)
        self.last_step: StepShape | None = None
        self._codec: BlockCodec | None = None
        self._limits = EngineLimits(
            vocab_size=self.model_config.vocab_size,
            max_model_len=self.config.max_model_len,
            block_size=self.config.block_size,
            num_blocks=blocks,
        )
        self._exports = KVExports(self._kv, self._scheduler, self._runner, self._seqs)
        self._adoptions = KVAdoptions(
            self._kv,
            self._scheduler,
            self._runner,
            self._seqs,
            self._new_sequence,
            self.check_request,
            self._clock,
            vocab_size=self.model_config.vocab_size,
            hash_seed=self.config.hash_seed,
        )

    @property
    def sharded(self) -> ShardedRunner | None:
        """The sharded runner when the model runs in rank actors, else None."""
        return self._sharded

    def scale_experts(self, expert_parallel: int) -> None:
        """Start moving a sharded MoE model to ``expert_parallel`` expert ranks while serving;
        the switch happens between two later steps (see `ShardedRunner.start_resize`)."""
        scale_experts(self._sharded, expert_parallel)

    @property
    def kv_cache_bytes(self) -> int:
        """Device memory held by the paged KV cache."""
        return self._runner.kv_cache_bytes

    def kv_block_codec(self) -> BlockCodec:
        """This engine's KV block layout and model identity, as the shared tier writes them
        (`kv_namespace`: KV hash fingerprint, checkpoint digest, dtype). Workers moving a
        request's KV check it (`kv_transfer.py`). The first call reads the whole checkpoint
        (its digest): call it off the engine thread."""
        if self._codec is None:
            self._codec = BlockCodec(
                layers=self.model_config.num_layers,
                block_size=self.config.block_size,
                kv_heads=self.model_config.num_kv_heads,
                head_dim=self.model_config.head_dim,
                dtype=self._runner.dtype,
                fingerprint=kv_namespace(self.config.kv_hash(), self.model_dir, self._runner.dtype),
            )
        return self._codec

    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters this engine serves, sorted."""
        return self._adapters.names if self._adapters is not None else []

    def check_request(self, req: EngineRequest, checked: int = 0) -> None:
        """Raise `EngineInputError` if ``req`` cannot be served (no state is touched); the
        first ``checked`` prompt tokens are known to be in the vocabulary already."""
        check_request(req, self._limits, self.adapters, checked)

    def add_request(self, req: EngineRequest) -> None:
        """Queue ``req``; raises `EngineInputError` if it is bad or its id is in use."""
        self.check_request(req)
        if req.request_id in self._seqs:
            raise EngineInputError(f"request id {req.request_id!r} is already in use")
        seed = req.sampling.seed if req.sampling.seed is not None else self._rng.getrandbits(63)
        seq = self._new_sequence(req, seed)
        self._seqs[req.request_id] = seq
        if self._tier is None or not self._tier.start_load(seq):
            self._scheduler.add(seq)

    def _new_sequence(
        self,
        req: EngineRequest,
        seed: int,
        detokenizer: DetokenizerState | None = None,
        block_hashes: list[int] | None = None,
    ) -> Sequence:
        decode, stop = self.tokenizer.decode, req.sampling.stop
        return Sequence(
            request=req,
            order=next(self._order),
            block_size=self.config.block_size,
            hash_seed=self.config.hash_seed,
            generator=torch.Generator(device=self._runner.device),
            seed=seed,
            block_hashes=block_hashes or [],
            detokenizer=(
                Detokenizer(decode, req.prompt_token_ids, stop)
                if detokenizer is None
                else Detokenizer.resume(decode, detokenizer, stop)
            ),
            arrival=req.arrival_time if req.arrival_time is not None else self._clock(),
        )

    # ------------------------------------------------------------------ KV migration
    # The logic lives in `kv_migration.py` (source) and `kv_adoption.py` (target); these run
    # on the engine thread (`AsyncEngine.call`), but for `prepare_adoption`.

    def export_kv(self, request_id: str, first_block: int, final: bool) -> ExportedKV:
        """A copy of a running request's blocks from ``first_block``; ``final`` pauses it and
        adds its state (see `KVExports.export`)."""
        return self._exports.export(request_id, first_block, final)

    def end_export(self, request_id: str, moved: bool) -> None:
        """After the final export: ``moved`` finishes the request here with reason
        "migrated" (it runs on the target now); otherwise it resumes where it paused."""
        seq = self._exports.end_export(request_id, moved)
        if seq is not None:
            self._pending.append(self._finish(seq, "migrated"))

    def import_kv(self, request_id: str, first_block: int, blocks: torch.Tensor) -> int:
        """Hold arriving blocks of a request this engine is to adopt; blocks held now."""
        return self._adoptions.import_blocks(request_id, first_block, blocks)

    def prepare_adoption(self, announced: EngineRequest) -> PreparedAdoption:
        """Check and hash the tokens of a request announced to be moved here, before its KV
        arrives, so that `adopt` does only the tokens after them (`EngineInputError` for a
        token outside the vocabulary). Reads only the engine's fixed configuration: safe on
        any thread."""
        return self._adoptions.prepare(announced)

    def adopt(self, state: MigratedState, prepared: PreparedAdoption | None = None) -> None:
        """Continue a request moved here with its KV (`import_kv` first); it is checked as a
        new request would be (`EngineInputError`). With ``prepared`` (`prepare_adoption` of
        its announcement), the tokens it covers are neither checked nor hashed again."""
        self._adoptions.adopt(state, prepared)

    def drop_import(self, request_id: str) -> None:
        """Free the blocks held for a request that will not be adopted after all."""
        self._adoptions.drop_import(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; its final output (reason "abort") comes with the next step."""
        seq = self._seqs.get(request_id)
        if seq is not None:
            self._pending.append(self._finish(seq, "abort"))
        else:
            self._adoptions.drop_import(request_id)

    def has_unfinished(self) -> bool:
        """Whether a step has anything to do (a request paused for migration has not)."""
        return bool(self._pending) or len(self._seqs) > self._exports.paused

    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; outputs of requests that advanced or finished."""
        start = self._clock()
        self.last_step = None
        between_steps(self._sharded)
        outputs, self._pending = self._pending, []
        if self._tier is not None:
            reserve = len(self._scheduler.running) + -(
                -self.config.max_batched_tokens // self.config.block_size
            )
            for loaded in self._tier.ready(not self._scheduler.has_work(), reserve):
                self._scheduler.add(loaded)
        batch = self._scheduler.schedule()
        if self._tier is not None:
            self._tier.unpin()
        shape_p: list[tuple[int, int]] = []
        shape_d: list[int] = []
        for seq, n in batch.items:
            if n == 1 and seq.num_computed >= seq.prompt_len:
                shape_d.append(seq.num_computed)
            else:
                shape_p.append((n, seq.num_computed))
                if seq.scheduled_time is None:
                    seq.scheduled_time = start
        self._metrics.preemptions += len(batch.preempted)
        self._metrics.prefix_hit_tokens += batch.prefix_hit_tokens
        self._metrics.prefix_query_tokens += batch.prefix_query_tokens
        if not batch.items:
            return outputs
        inputs = [
            StepInput(
                token_ids=seq.token_ids[seq.num_computed : seq.num_computed + n],
                start=seq.num_computed,
                block_ids=seq.table.block_ids,
                wants_logits=seq.num_computed + n == seq.num_tokens,
                adapter=self._adapter_slot(seq.request.adapter),
            )
            for seq, n in batch.items
        ]
        samplers = [
            seq for (seq, _), inp in zip(batch.items, inputs, strict=True) if inp.wants_logits
        ]
        try:
            self._runner.copy_blocks(batch.copies)
            run_start = self._clock()
            logits = self._runner.execute(inputs)
            run_seconds = self._clock() - run_start
            rows = [
                SampleRequest(
                    s.request.sampling,
                    s.generator if s.request.sampling.greedy else s.seed_next_sample(),
                )
                for s in samplers
            ]
            tokens, logprobs = sample(logits, rows)
        except EngineFatalError:
            raise
        except Exception as exc:
            log.exception("engine step failed; finishing its %d requests", len(batch.items))
            message = f"{type(exc).__name__}: {exc}"
            return outputs + [self._finish(seq, "error", message) for seq, _ in batch.items]
        committed: list[tuple[int, int]] = []
        for seq, n in batch.items:
            seq.num_computed += n
            committed += self._kv.commit(seq.table, seq.block_hashes, seq.num_computed)
        prefilled = sum(n for _, n in batch.items if n > 1) >= self.config.block_size
        if prefilled:
            self._prefill = self._prefill.observe_prefill(batch.num_tokens, run_seconds)
        if self._tier is not None:
            self._tier.write_through(committed)
            if prefilled:
                self._tier.observe_prefill(batch.num_tokens, run_seconds)
        now = self._clock()
        for seq, token, lp in zip(samplers, tokens, logprobs, strict=True):
            outputs.append(self._advance(seq, token, lp, now))
        seconds = self._clock() - start
        self._metrics.observe_step(seconds)
        self.last_step = StepShape(tuple(shape_p), tuple(shape_d), seconds)
        return outputs

    def metrics(self) -> EngineMetrics:
        snap = self._metrics.snapshot(
            running=len(self._scheduler.running),
            waiting=len(self._scheduler.waiting) + (self._tier.loading if self._tier else 0),
            kv_blocks_used=self._allocator.num_used,
            kv_blocks_total=self._allocator.num_blocks,
        )
        pending = sum(
            max(0, seq.prompt_len - seq.num_computed)
            for seq in (*self._scheduler.running, *self._scheduler.waiting)
        )
        snap = dataclasses.replace(
            snap,
            pending_prefill_tokens=pending,
            running_adapters=_adapter_names(self._scheduler.running),
            waiting_adapters=_adapter_names(self._scheduler.waiting),
        )
        return self.with_tier_counters(snap)

    def with_tier_counters(self, snap: EngineMetrics) -> EngineMetrics:
        """``snap`` with the shared tier's counters as of now. They grow on the tier's own
        threads too (writes finish after the step that queued them), so a reader on another
        thread (`AsyncEngine.metrics`) refreshes them rather than keep the last step's."""
        if self._tier is None:
            return dataclasses.replace(snap, kv_cost=self._prefill)
        tier = self._tier.tier.stats
        return dataclasses.replace(
            snap,
            kv_cost=self._tier.loader.cost,
            kv_tier_id=self._tier.tier_id,
            kv_fetch_policy=self._tier.loader.policy,
            redis_hit_tokens=self._tier.redis_hit_tokens,
            kv_tier_stored_blocks=self._tier.writer.stats.written,
            kv_tier_write_drops=self._tier.writer.stats.dropped,
            kv_tier_errors=tier.errors,
            kv_tier_fetched_blocks=tier.fetched_blocks,
            kv_tier_corrupt_blocks=tier.corrupt_blocks,
        )

    @property
    def kv_tier(self) -> TierLink | None:
        """The link to the shared KV tier, if one is configured."""
        return self._tier

    def drain_kv_events(self) -> list[KVEvent]:
        """Blocks stored and evicted since the last call, in order (device, then redis)."""
        events = self._allocator.drain_events()
        return events + self._tier.drain_events() if self._tier is not None else events

    def close(self) -> None:
        """Stop the tier's background threads (queued writes get a short grace period)."""
        if self._tier is not None:
            self._tier.close()
        if self._sharded is not None:
            self._sharded.close()

    def kv_snapshot(self) -> list[int]:
        """Every block hash whose KV this engine holds (for a router resync)."""
        return self._allocator.cached_hashes()

    def fail_all(self, message: str) -> list[RequestOutput]:
        """Finish every request with reason "error" (the engine loop's last resort)."""
        return [self._finish(seq, "error", message) for seq in list(self._seqs.values())]

    def _adapter_slot(self, name: str | None) -> int:
        if name is None or self._adapters is None:
            return 0
        return self._adapters.slots[name]

    def _advance(
        self, seq: Sequence, token: int, logprobs: dict[int, float] | None, now: float
    ) -> RequestOutput:
        seq.append(token)
        params = seq.request.sampling
        phases: tuple[float, float] | None = None
        if seq.first_token_time is None:
            seq.first_token_time = now
            self._metrics.ttft.observe(now - seq.arrival)
            self._metrics.prompt_tokens_total += seq.prompt_len
            scheduled = seq.scheduled_time if seq.scheduled_time is not None else seq.arrival
            phases = (scheduled - seq.arrival, now - scheduled)
        elif seq.last_token_time is not None:
            self._metrics.tpot.observe(now - seq.last_token_time)
        seq.last_token_time = now
        self._metrics.generation_tokens_total += 1
        reason: FinishReason | None = None
        if token in params.stop_token_ids or (not params.ignore_eos and token in self._eos):
            reason = "stop"
        else:
            seq.detokenizer.add(token)
            if seq.detokenizer.stopped:
                reason = "stop"
            elif len(seq.output_ids) >= params.max_tokens:
                reason = "length"
        text = seq.detokenizer.take(final=reason is not None)
        if reason is not None:
            self._release(seq, reason)
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[token],
            new_text=text,
            finished=reason is not None,
            finish_reason=reason,
            prompt_tokens=seq.prompt_len,
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.cached_tokens or 0,
            logprobs=[logprobs] if logprobs is not None else None,
            first_token_phases=phases,
        )

    def _release(self, seq: Sequence, reason: FinishReason) -> None:
        self._exports.forget(seq.request_id)
        self._adoptions.drop_import(seq.request_id)
        if self._tier is not None:
            self._tier.forget(seq)
        self._scheduler.remove(seq)
        self._seqs.pop(seq.request_id, None)
        seq.finish_reason = reason
        self._metrics.num_requests_finished += 1
        self._metrics.e2e.observe(self._clock() - seq.arrival)

    def _finish(
        self, seq: Sequence, reason: FinishReason, error: str | None = None
    ) -> RequestOutput:
        self._release(seq, reason)
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[],
            new_text="",
            finished=True,
            finish_reason=reason,
            prompt_tokens=seq.prompt_len,
            completion_tokens=len(seq.output_ids),
            cached_tokens=seq.cached_tokens or 0,
            error=error,
        )


def _adapter_names(seqs: Iterable[Sequence]) -> tuple[str, ...]:
    """The distinct LoRA adapters of ``seqs``, sorted (for the LoRA info gauge)."""
    return tuple(sorted({s.request.adapter for s in seqs if s.request.adapter}))
