"""Where generated checkpoints are cached, and their kinds (`Arch`, `Size`).

Why outside the `checkpoint` package: launchers (the supervisor on a RayCluster head, which
the operator's tests import too) must name a generated checkpoint's directory without
generating it, and the package imports torch; this module imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Arch = Literal["llama", "mixtral"]
Size = Literal["tiny", "small"]

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "mainsail" / "models"


def checkpoint_dir(
    arch: Arch, cache_dir: Path | None = None, seed: int = 0, size: Size = "tiny"
) -> Path:
    """Where `ensure_checkpoint` keeps this checkpoint (nothing is generated)."""
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    name = f"{arch}-s{seed}" if size == "tiny" else f"{arch}-{size}-s{seed}"
    return root / name
