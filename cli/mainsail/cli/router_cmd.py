"""`mainsail router --config FILE`: the router process, from either kind of config file.

On a cluster the operator mounts the deployment's one configuration document
(`mainsail.spec.config_document.DeploymentDocument`: the whole spec but the pool sizes);
locally `mainsail up` writes a `RouterConfig` JSON. Both end up as the same `RouterConfig`,
built by `RouterConfig.from_deployment` from the same spec, so a cluster router keeps every
mode a local one has (prefill/decode, SLO classes, adapters, profile) and the router and the
workers read KV parameters from one source.
This module lives in the CLI because a `generate:` model source needs the checkpoint
generator (a workers module) to produce the tokenizer, and the router package must not
import workers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mainsail.router.settings import RouterConfig
from mainsail.spec.config_document import MODEL_DIR_ENV, DeploymentDocument


def router_config_from_document(
    doc: dict[str, Any], host: str = "0.0.0.0", model_dir: Path | None = None
) -> RouterConfig:
    """A `RouterConfig` from the operator's configuration document: the same settings
    `mainsail up` derives from the same spec (roles, SLO classes, adapters, profile), its
    client and fleet ports bound to ``host``. ``model_dir`` (the operator's init container
    wrote the checkpoint there, `MAINSAIL_MODEL_DIR`) wins over the spec's source. Raises
    `ValueError` naming what is wrong."""
    try:
        document = DeploymentDocument.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"config: {exc}") from exc
    spec = document.spec
    if model_dir is not None:
        if not (model_dir / "tokenizer.json").is_file():
            raise ValueError(f"{MODEL_DIR_ENV}: no tokenizer.json in {model_dir}")
    elif spec.model.path:
        model_dir = Path(spec.model.path)
    else:
        from mainsail.workers.checkpoint import ensure_checkpoint

        assert spec.model.generate is not None  # ModelSource: exactly one of path/generate
        model_dir = ensure_checkpoint(
            spec.model.generate, seed=spec.model.seed, size=spec.model.size
        )
    assert model_dir is not None
    # The fleet port listens on every interface of the pod too: workers reach it by pod IP
    # (only they may: NetworkPolicy, worker token, mutual TLS).
    return RouterConfig.from_deployment(
        document.model_deployment(), model_dir, host=host, fleet_host=host
    )


def main(argv: list[str]) -> int:
    """Run the router; `--config` may be a RouterConfig or the operator's document."""
    from mainsail.router.__main__ import main as router_main

    if "--config" not in argv:
        return router_main(argv)
    i = argv.index("--config")
    path = Path(argv[i + 1])
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"mainsail router: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if "kvHash" in doc:
        try:
            given = os.environ.get(MODEL_DIR_ENV)
            config = router_config_from_document(doc, model_dir=Path(given) if given else None)
        except ValueError as exc:
            print(f"mainsail router: {exc}", file=sys.stderr)
            return 2
        converted = Path(tempfile.mkdtemp(prefix="mainsail-router-")) / "router.json"
        converted.write_text(config.model_dump_json())
        argv = [*argv[:i], "--config", str(converted), *argv[i + 2 :]]
    return router_main(argv)
