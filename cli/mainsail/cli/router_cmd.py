"""`mainsail router --config FILE`: the router process, from either kind of config file.

On a cluster the operator mounts the deployment's one configuration document
(`mainsail.operator.desired_config`: `engine`, `router`, `slo`, `model`, `kvHash`, …); locally
`mainsail up` writes a `RouterConfig` JSON. Both end up as the same `RouterConfig`, derived
from the same spec models, so the router and the workers read KV parameters from one source.
This module lives in the CLI because a `generate:` model source needs the checkpoint
generator (a workers module) to produce the tokenizer, and the router package must not
import workers.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from mainsail.router.settings import RouterConfig
from mainsail.spec.deployment import ModelDeployment, ModelDeploymentSpec


def router_config_from_document(doc: dict[str, Any], host: str = "0.0.0.0") -> RouterConfig:
    """A `RouterConfig` from the operator's configuration document."""
    spec = ModelDeploymentSpec.model_validate(
        {key: doc[key] for key in ("model", "engine", "router", "slo", "adapters") if key in doc}
        | {"pools": {"unified": {}}}
    )
    deployment = ModelDeployment.model_validate(
        {
            "metadata": {"name": doc.get("deployment", "mainsail")},
            "spec": spec.model_dump(by_alias=True),
        }
    )
    if spec.model.path:
        model_dir = Path(spec.model.path)
    else:
        from mainsail.workers.checkpoint import ensure_checkpoint

        assert spec.model.generate is not None
        model_dir = ensure_checkpoint(
            spec.model.generate, seed=spec.model.seed, size=spec.model.size
        )
    config = RouterConfig.from_deployment(deployment, model_dir, host=host)
    declared = doc.get("kvFingerprint")
    if declared and declared != config.kv_hash.fingerprint():
        raise ValueError(
            f"config: kvFingerprint {declared} disagrees with the engine settings "
            f"({config.kv_hash.fingerprint()})"
        )
    return config


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
            config = router_config_from_document(doc)
        except ValueError as exc:
            print(f"mainsail router: {exc}", file=sys.stderr)
            return 2
        converted = Path(tempfile.mkdtemp(prefix="mainsail-router-")) / "router.json"
        converted.write_text(config.model_dump_json())
        argv = [*argv[:i], "--config", str(converted), *argv[i + 2 :]]
    return router_main(argv)
