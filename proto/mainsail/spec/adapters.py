"""`spec.adapters`: the LoRA adapters a deployment serves beside its base model."""

from __future__ import annotations

from pydantic import Field

from mainsail.spec.spec_model import SpecModel


class Adapter(SpecModel):
    """A LoRA adapter clients select with `model: <base>:<adapter>` or the adapter field."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = Field(None, description="Adapter directory (PEFT layout).")
    generate_rank: int | None = Field(
        None, ge=1, le=256, description="Generate a tiny random adapter of this rank (tests)."
    )
