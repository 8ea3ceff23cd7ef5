"""KV blocks and request state on the wire between two workers (`Worker.ReceiveKV`).

Why the shared tier's block format: a block that moves between workers goes into the
target's cache exactly as one fetched from Redis does, so it carries the same guarantees
(`mainsail.workers.kvtier.codec`): the header names the layout and the model identity (KV
hash fingerprint, checkpoint digest, dtype) and every block ends with its BLAKE2b-64
checksum. A target refuses a header that differs from its own — another model, fine-tune,
dtype or block size — and a block whose checksum fails, before anything reaches its cache.

A stage's blocks travel as one byte string of rows (data | checksum), split into messages of
at most `MAX_MESSAGE_BYTES` (well under the gRPC limit both ends set).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.workers.engine import EngineRequest
from mainsail.workers.engine.detokenizer import DetokenizerState
from mainsail.workers.engine.kv_migration import MigratedState
from mainsail.workers.kvtier import BlockCodec
from mainsail.workers.kvtier.checksum import CHECKSUM_BYTES, checksum_rows, first_corrupt
from mainsail.workers.wire import sampling_from_proto, sampling_to_proto

MAX_MESSAGE_BYTES = 8 << 20


class KVRefused(ValueError):
    """Blocks or state this worker will not take (other model, corrupt, malformed)."""


def stage_messages(
    codec: BlockCodec, request_id: str, first_block: int, blocks: torch.Tensor | None
) -> Iterator[pb.KVStage]:
    """``blocks`` (``[n, *codec.shape]``) as `KVStage` messages; one empty message when
    there are none (a stage that only carries the header and, last, the state)."""
    n = 0 if blocks is None else int(blocks.shape[0])
    if blocks is None or n == 0:
        yield pb.KVStage(request_id=request_id, first_block=first_block, header=codec.header)
        return
    if tuple(blocks.shape[1:]) != codec.shape:
        raise ValueError(f"blocks {tuple(blocks.shape)} do not match the codec {codec.shape}")
    data = blocks.detach().to("cpu", codec.dtype).contiguous().view(torch.uint8)
    rows = data.reshape(n, -1).numpy()
    payload = np.empty((n, rows.shape[1] + CHECKSUM_BYTES), dtype=np.uint8)
    payload[:, : rows.shape[1]] = rows
    payload[:, rows.shape[1] :] = checksum_rows(rows)
    per_message = max(1, MAX_MESSAGE_BYTES // payload.shape[1])
    for start in range(0, n, per_message):
        part = payload[start : start + per_message]
        yield pb.KVStage(
            request_id=request_id,
            first_block=first_block + start,
            num_blocks=int(part.shape[0]),
            header=codec.header,
            blocks=part.tobytes(),
        )


def stage_blocks(codec: BlockCodec, stage: pb.KVStage) -> torch.Tensor | None:
    """The blocks of one message as a ``[n, *codec.shape]`` tensor, checked; `KVRefused`
    when they are another model's or layout's, truncated or corrupt."""
    if stage.header != codec.header:
        theirs = stage.header[:200].decode(errors="replace")
        raise KVRefused(
            f"KV blocks of another model or layout (theirs {theirs!r}, this worker "
            f"{codec.header.decode(errors='replace')!r})"
        )
    n = stage.num_blocks
    if n < 0:
        raise KVRefused("num_blocks must be >= 0")
    if n == 0:
        if stage.blocks:
            raise KVRefused("blocks sent with num_blocks 0")
        return None
    row = codec.block_bytes() + CHECKSUM_BYTES
    if len(stage.blocks) != n * row:
        raise KVRefused(f"{len(stage.blocks)} bytes for {n} blocks of {row} bytes")
    rows = np.frombuffer(stage.blocks, dtype=np.uint8).reshape(n, row)
    data, trailers = rows[:, : codec.block_bytes()], rows[:, codec.block_bytes() :]
    bad = first_corrupt(data, trailers)
    if bad < n:
        raise KVRefused(f"KV block {stage.first_block + bad} is corrupt (checksum mismatch)")
    out = torch.from_numpy(data.copy()).view(codec.dtype)
    return out.reshape(n, *codec.shape)


def state_to_proto(state: MigratedState) -> pb.MigratedRequest:
    req, detok = state.request, state.detokenizer
    return pb.MigratedRequest(
        prompt_token_ids=req.prompt_token_ids,
        output_token_ids=list(state.output_ids),
        sampling=sampling_to_proto(req.sampling),
        adapter=req.adapter or "",
        priority=req.priority,
        sampled_before=req.sampled_before,
        cache_namespace=req.cache_namespace or "",
        seed=state.seed,
        num_computed=state.num_computed,
        cached_tokens=state.cached_tokens,
        detok_ids=list(detok.ids),
        detok_prefix=detok.prefix,
        detok_read=detok.read,
        detok_pending=detok.pending,
        tpot_s=req.tpot_s or 0.0,
    )


def state_from_proto(request_id: str, m: pb.MigratedRequest) -> MigratedState:
    """The state a source sent; `KVRefused` when it is malformed (the engine then checks
    the request itself as it checks a new one)."""
    total = len(m.prompt_token_ids) + len(m.output_token_ids)
    if not 0 <= m.num_computed < total:
        raise KVRefused(f"num_computed {m.num_computed} outside [0, {total})")
    if not 0 <= m.seed < 2**63:
        raise KVRefused("seed must be in [0, 2**63)")
    if not 0 <= m.detok_prefix <= m.detok_read <= len(m.detok_ids):
        raise KVRefused("detokenizer offsets outside its window")
    request = EngineRequest(
        request_id=request_id,
        prompt_token_ids=list(m.prompt_token_ids),
        sampling=sampling_from_proto(m.sampling),
        priority=m.priority,
        adapter=m.adapter or None,
        sampled_before=m.sampled_before,
        cache_namespace=m.cache_namespace or None,
        tpot_s=m.tpot_s if m.tpot_s > 0 else None,
    )
    return MigratedState(
        request=request,
        output_ids=tuple(m.output_token_ids),
        seed=m.seed,
        num_computed=m.num_computed,
        cached_tokens=m.cached_tokens,
        detokenizer=DetokenizerState(
            tuple(m.detok_ids), m.detok_prefix, m.detok_read, m.detok_pending
        ),
    )
