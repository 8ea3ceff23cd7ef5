"""LoRA adapters: read PEFT checkpoints and apply many adapters inside one batch.

A LoRA adapter adds ``scale * (x A^T) B^T`` to the output of some linear layers, with
``A: [r, in]``, ``B: [out, r]`` and ``scale = lora_alpha / r`` (``/ sqrt(r)`` for rsLoRA).
Several adapters stay resident on one base model; every token row of a step carries an adapter
*slot* (0 = base model). For each targeted linear the step's rows are grouped by adapter and
each group gets its own low-rank update (``index_select`` / ``index_add_``): the work loops over
the distinct adapters of the step, never over rows, and a step whose rows are all base costs
one attribute check per linear.

Why strict loading: an adapter whose tensors do not fit the base model, or that targets a layer
this model cannot adapt, would otherwise be silently ignored or produce garbage; each such case
raises `CheckpointError` naming the adapter, the file and the tensor or module.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mainsail.workers.models.errors import CheckpointError
from mainsail.workers.models.layers import Linear
from mainsail.workers.models.llama import LlamaForCausalLM

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
# PEFT options that change the math; refused rather than ignored.
_UNSUPPORTED_FLAGS = ("use_dora", "fan_in_fan_out")
_UNSUPPORTED_NONEMPTY = ("modules_to_save", "rank_pattern", "alpha_pattern")


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of a PEFT ``adapter_config.json`` that change what the adapter computes.

    ``target_modules`` holds module-name suffixes, or is a regular expression matched against
    the whole module name (PEFT's string form); ``"all-linear"`` means every adaptable linear.
    """

    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        """Multiplier of ``B A``: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def targets(self, module: str) -> bool:
        """Whether the module named ``module`` (e.g. ``model.layers.0.self_attn.q_proj``) is
        one this config adapts."""
        if isinstance(self.target_modules, str):
            return self.target_modules == "all-linear" or bool(
                re.fullmatch(self.target_modules, module)
            )
        leaf = module.rsplit(".", 1)[-1]
        return leaf in self.target_modules or module in self.target_modules


def read_adapter_config(adapter_dir: Path) -> AdapterConfig:
    """Parse and check ``adapter_dir/adapter_config.json``."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not Path(adapter_dir).is_dir():
        raise CheckpointError(f"adapter directory {adapter_dir} does not exist")
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"no {ADAPTER_CONFIG} in adapter directory {adapter_dir}") from exc
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    kind = raw.get("peft_type", "LORA")
    if kind != "LORA":
        raise CheckpointError(f"{path}: peft_type {kind!r} is not supported (only 'LORA')")
    for flag in _UNSUPPORTED_FLAGS:
        if raw.get(flag):
            raise CheckpointError(f"{path}: {flag}=true is not supported")
    for key in _UNSUPPORTED_NONEMPTY:
        if raw.get(key):
            raise CheckpointError(f"{path}: {key} is not supported")
    if raw.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: bias={raw['bias']!r} is not supported (only 'none')")
    rank, alpha = raw.get("r"), raw.get("lora_alpha", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise CheckpointError(f"{path}: `r` must be a positive integer, got {rank!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise CheckpointError(f"{path}: `lora_alpha` must be a number, got {alpha!r}")
    targets = raw.get("target_modules")
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        target_modules: tuple[str, ...] | str = tuple(targets)
    elif isinstance(targets, str) and targets:
        target_modules = targets
    else:
        raise CheckpointError(f"{path}: `target_modules` must name modules, got {targets!r}")
    return AdapterConfig(rank, float(alpha), target_modules, bool(raw.get("use_rslora", False)))


def read_adapter_tensors(adapter_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{module name: {"A": lora_A, "B": lora_B}}`` from ``adapter_model.safetensors``."""
    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no {ADAPTER_WEIGHTS} in adapter directory {adapter_dir}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            for key in names:
                match = _KEY.match(key)
                if match is None:
                    raise CheckpointError(
                        f"{path}: tensor {key!r} is not a LoRA weight "
                        "(expected base_model.model.<module>.lora_A/B.weight)"
                    )
                out.setdefault(match["module"], {})[match["part"]] = f.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not out:
        raise CheckpointError(f"{path} holds no LoRA tensors")
    return out


Rows = slice | torch.Tensor


@dataclass
class _Step:
    """The current step's rows grouped by adapter slot: a slice when the slot's rows are
    contiguous (the model runner orders them so), else their indices."""

    groups: list[tuple[int, Rows]]


class LoRAHook:
    """The low-rank factors every resident adapter has for one linear layer.

    Stored pre-transposed with the scale folded into ``B``: ``delta = (x @ a) @ b`` with
    ``a = A^T`` (``[in, r]``) and ``b = scale * B^T`` (``[r, out]``).
    """

    def __init__(self, step: _Step) -> None:
        self._step = step
        self.factors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``y`` (the base output for input ``x``, updated in place) plus each row's adapter
        update."""
        for slot, rows in self._step.groups:
            factors = self.factors.get(slot)
            if factors is None:
                continue
            a, b = factors
            if isinstance(rows, slice):
                y[rows].addmm_(x[rows] @ a, b)
            else:
                y.index_add_(0, rows, (x.index_select(0, rows) @ a) @ b)
        return y


ShardFactor = Callable[[str, str, torch.Tensor], torch.Tensor]
"""(module name, ``"A"`` or ``"B"``, full factor) -> the part a model shard holds."""


class AdapterSet:
    """The LoRA adapters resident on one model, each known by name and a slot number (>= 1).

    Loading installs a `LoRAHook` on each adaptable `Linear` (``model.lora_targets()``) the
    adapter touches; `activate` tells the hooks which rows of the next forward use which slot.
    On a tensor-parallel shard, ``shard`` cuts each factor to the shard's part (the adapter
    is checked against the whole model first, in the engine's process), and the factors are
    then checked against the shard's layers.
    """

    def __init__(self, model: LlamaForCausalLM, shard: ShardFactor | None = None) -> None:
        self._model = model
        self._shard = shard
        self._targets = model.lora_targets()
        self._linears = {n for n, m in model.named_modules() if isinstance(m, Linear)}
        self._step = _Step(groups=[])
        self.slots: dict[str, int] = {}
        self.configs: dict[str, AdapterConfig] = {}

    @property
    def names(self) -> list[str]:
        """Loaded adapter names, sorted."""
        return sorted(self.slots)

    def load(self, name: str, adapter_dir: Path) -> int:
        """Read the PEFT adapter in ``adapter_dir``, check it fits the model; its slot."""
        if name in self.slots:
            raise ValueError(f"adapter {name!r} is already loaded")
        try:
            cfg, factors = self._read(Path(adapter_dir))
        except CheckpointError as exc:
            raise CheckpointError(f"adapter {name!r}: {exc}") from exc
        slot = len(self.slots) + 1
        for module, (a, b) in factors.items():
            hook = self._targets[module].lora
            if hook is None:
                hook = self._targets[module].lora = LoRAHook(self._step)
            hook.factors[slot] = (a, b)
        self.slots[name] = slot
        self.configs[name] = cfg
        return slot

    def _read(
        self, adapter_dir: Path
    ) -> tuple[AdapterConfig, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        cfg = read_adapter_config(adapter_dir)
        arch = type(self._model).__name__
        if isinstance(cfg.target_modules, tuple):
            leaves = {n.rsplit(".", 1)[-1] for n in self._linears}
            for target in cfg.target_modules:
                if target not in leaves and target not in self._linears:
                    raise CheckpointError(
                        f"target module {target!r} does not exist in {arch} "
                        f"(its linear layers: {sorted(leaves)})"
                    )
        tensors = read_adapter_tensors(adapter_dir)
        param = next(self._model.parameters())
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module, parts in sorted(tensors.items()):
            out[module] = self._factors(module, parts, cfg, adapter_dir, param)
        return cfg, out

    def _factors(
        self,
        module: str,
        parts: Mapping[str, torch.Tensor],
        cfg: AdapterConfig,
        adapter_dir: Path,
        param: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        arch = type(self._model).__name__
        where = adapter_dir / ADAPTER_WEIGHTS
        if module not in self._linears:
            raise CheckpointError(f"{where}: module {module!r} does not exist in {arch}")
        if module not in self._targets:
            raise CheckpointError(f"{where}: LoRA on {module!r} is not supported by {arch}")
        if not cfg.targets(module):
            raise CheckpointError(f"{where}: {module!r} is not in target_modules")
        if set(parts) != {"A", "B"}:
            missing = "lora_B" if "A" in parts else "lora_A"
            raise CheckpointError(f"{where}: {module!r} has no {missing} weight")
        if self._shard is not None:
            parts = {part: self._shard(module, part, t) for part, t in parts.items()}
        weight = self._targets[module].weight
        out_f, in_f = weight.shape
        want = {"A": (cfg.rank, in_f), "B": (out_f, cfg.rank)}
        for part, shape in want.items():
            got = tuple(parts[part].shape)
            if got != shape:
                raise CheckpointError(
                    f"{where}: {module}.lora_{part} has shape {list(got)}, expected "
                    f"{list(shape)} (r={cfg.rank}, {arch} layer is {out_f}x{in_f})"
                )
        a = parts["A"].to(torch.float32).t()
        b = (parts["B"].to(torch.float32) * cfg.scale).t()
        return (
            a.to(param.device, param.dtype).contiguous(),
            b.to(param.device, param.dtype).contiguous(),
        )

    @contextlib.contextmanager
    def activate(self, row_slots: Sequence[int], device: torch.device) -> Iterator[None]:
        """During the block, row ``i`` of every forward uses adapter slot ``row_slots[i]``."""
        present = sorted(set(row_slots) - {0})
        if not present:
            yield
            return
        groups: list[tuple[int, Rows]] = []
        for slot in present:
            rows = [i for i, s in enumerate(row_slots) if s == slot]
            if rows[-1] - rows[0] + 1 == len(rows):
                groups.append((slot, slice(rows[0], rows[-1] + 1)))
            else:
                groups.append((slot, torch.tensor(rows, dtype=torch.long, device=device)))
        self._step.groups = groups
        try:
            yield
        finally:
            self._step.groups = []
