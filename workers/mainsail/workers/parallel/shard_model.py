"""Build one rank's shard of a checkpoint: a smaller model of the same class, with sharded
layers swapped in, loaded with only this rank's slices of the weights.

Why slicing at load time: each rank reads just its rows and columns from the safetensors
files (``get_slice``), so no rank ever holds the whole model. The shard is the ordinary
model class built from a config whose sizes are the per-rank ones (heads, KV heads, MLP
rows, vocabulary slice), so attention, RoPE and the paged KV cache need no sharded variant:
a rank's KV cache is simply the cache of its own KV heads.

Mixture-of-experts layers are never split by tensor parallelism here: their experts are
placed whole on expert-parallel ranks (`ExpertParallelMoE`). A rank that holds experts but no
attention (an "expert-only" rank, when the expert degree exceeds the tensor degree) builds
just the MoE layers (`build_expert_stack`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from mainsail.workers.models import LlamaForCausalLM, ModelConfig, model_class
from mainsail.workers.models.errors import CheckpointError
from mainsail.workers.models.llama import DecoderLayer
from mainsail.workers.models.loader import weight_files
from mainsail.workers.models.lora import ShardFactor
from mainsail.workers.models.mixtral import MixtralForCausalLM
from mainsail.workers.parallel.collectives import Collectives
from mainsail.workers.parallel.layers import (
    ExpertParallelMoE,
    RowParallelLinear,
    VocabParallelEmbedding,
    VocabParallelHead,
)
from mainsail.workers.parallel.plan import ModelShape, TensorLayout


def model_shape(cfg: ModelConfig) -> ModelShape:
    """The sizes `plan` shards by."""
    return ModelShape(
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        num_experts=cfg.num_experts,
    )


def local_config(cfg: ModelConfig, layout: TensorLayout) -> ModelConfig:
    """``cfg`` with this rank's sizes (MoE experts stay whole: they are placed, not split)."""
    return dataclasses.replace(
        cfg,
        num_heads=len(layout.heads),
        num_kv_heads=len(layout.kv_heads),
        intermediate_size=cfg.intermediate_size if cfg.num_experts else len(layout.intermediate),
        vocab_size=layout.vocab_per_rank,
    )


Slice = tuple[int, range] | None
"""(dimension, global index range) to read of a tensor; None = the whole tensor."""


def slice_of(name: str, cfg: ModelConfig, layout: TensorLayout) -> Slice:
    """Which part of checkpoint tensor ``name`` rank ``layout.rank`` holds."""
    d = cfg.head_dim

    def scaled(r: range) -> range:
        return range(r.start * d, r.stop * d)

    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return 0, scaled(layout.heads)
    if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")) or name.endswith(
        ("self_attn.v_proj.weight", "self_attn.v_proj.bias")
    ):
        return 0, scaled(layout.kv_heads)
    if name.endswith("self_attn.o_proj.weight"):
        return 1, scaled(layout.heads)
    if not cfg.num_experts:
        if name.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
            return 0, layout.intermediate
        if name.endswith("mlp.down_proj.weight"):
            return 1, layout.intermediate
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return 0, layout.vocab
    return None


def lora_part(cfg: ModelConfig, layout: TensorLayout) -> ShardFactor:
    """How rank ``layout.rank`` cuts a LoRA adapter's factors, like the base layer they
    adapt: a column-parallel layer (rows of its output) keeps the same rows of ``B``; a
    row-parallel layer (columns of its input) keeps the same columns of ``A``, and its
    update ``(x_r A_r^T) B^T`` is summed over the ranks with the base output. The other
    factor is whole on every rank."""

    def cut(module: str, part: str, factor: torch.Tensor) -> torch.Tensor:
        where = slice_of(f"{module}.weight", cfg, layout)
        if where is None:
            return factor
        dim, rows = where
        if dim == 0 and part == "B":
            return factor[rows.start : rows.stop]
        if dim == 1 and part == "A":
            return factor[:, rows.start : rows.stop]
        return factor

    return cut


def _swap_layers(
    model: LlamaForCausalLM,
    cfg: ModelConfig,
    layout: TensorLayout,
    held: tuple[int, ...],
    comm: Collectives,
) -> None:
    local = model.config
    model.model.add_module(
        "embed_tokens",
        VocabParallelEmbedding(layout.vocab.start, layout.vocab_per_rank, cfg.hidden_size, comm),
    )
    model.add_module(
        "lm_head", VocabParallelHead(layout.vocab_per_rank, cfg.hidden_size, cfg.vocab_size, comm)
    )
    for layer in model.model.layers:
        assert isinstance(layer, DecoderLayer)
        attn = layer.self_attn
        attn.o_proj = RowParallelLinear(
            local.num_heads * cfg.head_dim, cfg.hidden_size, cfg.attention_bias, comm
        )
        if isinstance(model, MixtralForCausalLM):
            layer.add_module("block_sparse_moe", _moe(cfg, held, comm))
        else:
            down = RowParallelLinear(local.intermediate_size, cfg.hidden_size, False, comm)
            layer.get_submodule("mlp").add_module("down_proj", down)


def _moe(cfg: ModelConfig, held: tuple[int, ...], comm: Collectives) -> ExpertParallelMoE:
    return ExpertParallelMoE(
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_experts,
        cfg.experts_per_token,
        held,
        comm,
    )


class SliceReader:
    """Reads (slices of) named tensors from a checkpoint's safetensors files."""

    def __init__(self, model_dir: Path, dtype: torch.dtype, device: torch.device) -> None:
        self.model_dir, self.dtype, self.device = Path(model_dir), dtype, device
        self._file_of: dict[str, str] = {}
        for fname in weight_files(self.model_dir):
            with safe_open(str(self.model_dir / fname), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    self._file_of[name] = fname

    def names(self) -> Iterable[str]:
        return self._file_of

    def read(self, name: str, part: Slice, pad_to: int | None = None) -> torch.Tensor:
        """Tensor ``name`` (or its ``part``), zero-padded along the sliced dim to ``pad_to``."""
        fname = self._file_of.get(name)
        if fname is None:
            raise CheckpointError(f"checkpoint {self.model_dir} is missing tensor {name!r}")
        with safe_open(str(self.model_dir / fname), framework="pt") as f:
            view = f.get_slice(name)
            if part is None:
                t = view[:]
            else:
                dim, r = part
                index = [slice(None)] * len(view.get_shape())
                index[dim] = slice(r.start, r.stop)
                t = view[tuple(index)]
        t = t.to(self.dtype)
        if part is not None and pad_to is not None and t.shape[part[0]] < pad_to:
            pad = list(t.shape)
            pad[part[0]] = pad_to - t.shape[part[0]]
            t = torch.cat([t, t.new_zeros(pad)], dim=part[0])
        out: torch.Tensor = t.to(self.device)
        return out


def _assign(
    module: nn.Module, tensors: dict[str, torch.Tensor], where: str, tied: Iterable[str] = ()
) -> None:
    skip = set(tied)
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in skip}
    for name, shape in expected.items():
        got = tensors.get(name)
        if got is None:
            raise CheckpointError(f"{where}: no tensor for {name!r}")
        if tuple(got.shape) != shape:
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {list(got.shape)}, the shard expects "
                f"{list(shape)}"
            )
    module.load_state_dict(tensors, strict=not skip, assign=True)


def build_shard(
    model_dir: Path,
    cfg: ModelConfig,
    layout: TensorLayout,
    held: tuple[int, ...],
    comm: Collectives,
    dtype: torch.dtype,
    device: torch.device,
) -> LlamaForCausalLM:
    """Rank ``layout.rank``'s model: its attention heads, MLP rows, vocabulary slice and
    (for MoE) the experts ``held``; ready to run once its peers have built theirs."""
    cls = model_class(cfg.architecture)
    with torch.device("meta"):
        model = cls(local_config(cfg, layout))
        _swap_layers(model, cfg, layout, held, comm)
    reader = SliceReader(model_dir, dtype, device)
    tied = model.tied_weights()
    tensors: dict[str, torch.Tensor] = {}
    for name in model.state_dict():
        if name in tied:
            continue
        source = name
        part = slice_of(name, cfg, layout)
        if name.endswith("self_attn.o_proj.bias") and layout.rank != 0:
            tensors[name] = torch.zeros(cfg.hidden_size, dtype=dtype, device=device)
            continue
        pad = (
            layout.vocab_per_rank
            if name in ("model.embed_tokens.weight", "lm_head.weight")
            else None
        )
        tensors[name] = reader.read(source, part, pad)
    _assign(model, tensors, f"shard {layout.rank}/{layout.size} of {model_dir}", tied)
    for moe in moe_layers(model):
        moe.load = torch.zeros(cfg.num_experts, dtype=torch.long, device=device)
    for name, source in tied.items():
        owner, _, attr = name.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    model.prepare(device)
    model.eval()
    return model


def expert_tensors(
    reader: SliceReader, layer: int, experts: Iterable[int]
) -> dict[str, torch.Tensor]:
    """The weights of ``experts`` in MoE layer ``layer``, named as in `ExpertParallelMoE`."""
    prefix = f"model.layers.{layer}.block_sparse_moe."
    out: dict[str, torch.Tensor] = {}
    for e in experts:
        for w in ("w1", "w2", "w3"):
            out[f"experts.{e}.{w}.weight"] = reader.read(f"{prefix}experts.{e}.{w}.weight", None)
    return out


def load_experts(
    moe: ExpertParallelMoE, tensors: dict[str, torch.Tensor], experts: Iterable[int]
) -> dict[int, nn.Module]:
    """New expert modules for ``experts`` built from ``tensors`` (not yet installed)."""
    made: dict[int, nn.Module] = {}
    for e in experts:
        with torch.device("meta"):
            module = moe.new_expert()
        part = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"experts.{e}.")}
        _assign(module, part, f"expert {e}")
        made[e] = module
    return made


def build_expert_stack(
    model_dir: Path,
    cfg: ModelConfig,
    held: tuple[int, ...],
    comm: Collectives,
    dtype: torch.dtype,
    device: torch.device,
) -> list[ExpertParallelMoE]:
    """The MoE layers of an expert-only rank: gates plus the experts ``held``, per layer."""
    reader = SliceReader(model_dir, dtype, device)
    stack: list[ExpertParallelMoE] = []
    for layer in range(cfg.num_layers):
        with torch.device("meta"):
            moe = _moe(cfg, held, comm)
        prefix = f"model.layers.{layer}.block_sparse_moe."
        tensors = {"gate.weight": reader.read(prefix + "gate.weight", None)}
        tensors.update(expert_tensors(reader, layer, held))
        _assign(moe, tensors, f"MoE layer {layer} of {model_dir}")
        moe.load = torch.zeros(cfg.num_experts, dtype=torch.long, device=device)
        stack.append(moe)
    return stack


def moe_layers(model: LlamaForCausalLM) -> list[ExpertParallelMoE]:
    """The model's expert-parallel MoE layers, in order (empty for dense models)."""
    return [m for m in model.modules() if isinstance(m, ExpertParallelMoE)]
