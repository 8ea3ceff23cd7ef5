"""The `mainsail` command: `up` (local stack), `model init`, `router`, `sim`, `crd`."""
