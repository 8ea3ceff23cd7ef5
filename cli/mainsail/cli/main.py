"""`mainsail`: the command users type. Subcommands import their component lazily, so
`mainsail --help` is instant and a CPU-only machine never imports what it does not use."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mainsail",
        description="Mainsail: a Kubernetes-native control plane for serving LLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser(
        "up",
        help="Run a ModelDeployment locally: Redis, Ray workers and the router.",
        description="Realize a ModelDeployment on this machine (the same YAML `kubectl apply` "
        "takes) and serve it until Ctrl-C or SIGTERM.",
    )
    up.add_argument(
        "-f",
        "--file",
        type=Path,
        help="ModelDeployment YAML (default: the embedded tiny deployment, "
        "same as deploy/examples/tiny.yaml).",
    )
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address the router binds to (default: loopback only). The admin API (/workers, "
        "drains, migrations) needs the run's generated token (MAINSAIL_ROUTER_ADMIN_TOKEN if "
        "set), printed at start as a file path, whatever the host.",
    )
    up.add_argument(
        "--http-port",
        type=int,
        help="OpenAI-compatible HTTP port (default: spec.router.httpPort; 0 = any free port).",
    )
    up.add_argument(
        "--grpc-port",
        type=int,
        help="gRPC port (default: spec.router.grpcPort; 0 = any free port).",
    )
    up.add_argument(
        "--redis-url",
        help="Use this Redis (redis://host:port) instead of starting the embedded valkey server.",
    )
    up.add_argument("--replicas", type=int, help="Override every worker pool's replica count.")
    up.add_argument(
        "--routers",
        type=int,
        help="Router replicas, active-active (default: spec.router.replicas). Replica i binds "
        "the HTTP and gRPC ports + i (0: each a free port); every worker registers with all.",
    )
    up.add_argument(
        "--model-cache",
        type=Path,
        help="Where generated checkpoints are cached (default: ~/.cache/mainsail/models).",
    )
    up.add_argument(
        "--ready-file",
        type=Path,
        help="Write the endpoints as JSON to this file once serving (for scripts).",
    )
    up.add_argument(
        "--autoscale-seconds",
        type=float,
        default=5.0,
        help="Seconds between expert-parallel autoscaler rounds (deployments with "
        "engine.expertParallel; default: 5).",
    )
    up.add_argument("--quiet", action="store_true", help="No progress display.")

    status = sub.add_parser(
        "status",
        help="Show a local stack's expert-parallel degree, last decision and events.",
        description="Read the status file `mainsail up` names at start (its ready file's "
        "`status_file`) and the stack's router: each pool's degree, the autoscaler's last "
        "decision with its reason, each worker's live degree, and the recent changes.",
    )
    status.add_argument("file", type=Path, help="The status file `mainsail up` printed.")
    status.add_argument("--json", action="store_true", help="Print JSON instead of text.")

    model = sub.add_parser("model", help="Model checkpoints.")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    init = model_sub.add_parser(
        "init",
        help="Generate a tiny deterministic checkpoint in Hugging Face layout.",
        description="Write config.json, model.safetensors and tokenizer.json of a tiny "
        "Llama-style (dense) or Mixtral-style (MoE) model. No model hub needed.",
    )
    init.add_argument(
        "--arch",
        choices=["llama", "mixtral"],
        default="llama",
        help="Architecture (default: llama).",
    )
    init.add_argument("--out", type=Path, required=True, help="Output directory.")
    init.add_argument("--seed", type=int, default=0, help="Weight seed (default: 0).")
    init.add_argument(
        "--size",
        choices=["tiny", "small"],
        default="tiny",
        help="tiny: hidden 64, 2 layers (tests); small: hidden 256, 4 layers, prefill costs "
        "real CPU time (benchmarks). Default: tiny.",
    )

    # These hand their arguments to the component's own parser (see _delegate).
    sub.add_parser("router", help="Run the router process alone (as on a cluster).")
    sub.add_parser("sim", help="Replay a trace through the real router in a simulator.")
    sub.add_parser("operator", help="Run the Kubernetes operator.")
    sub.add_parser("crd", help="Print (or --write DIR) the CustomResourceDefinitions.")
    return parser


_DELEGATED = ("router", "sim", "operator", "crd")


def _delegate(command: str, rest: list[str]) -> int:
    """Run a component's own command line with the remaining arguments."""
    if command == "router":
        from mainsail.cli.router_cmd import main as router_main

        return router_main(rest)
    if command == "sim":
        from mainsail.sim.cli import main as sim_main

        return sim_main(rest)
    if command == "operator":
        from mainsail.operator.__main__ import main as operator_main

        return int(operator_main(rest))
    from mainsail.spec.crd import main as crd_main

    return int(crd_main(rest))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mainsail` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0] in _DELEGATED:
        return _delegate(words[0], words[1:])
    args = _parser().parse_args(words)
    if args.command == "up":
        from mainsail.cli.up import run_up

        return run_up(args)
    if args.command == "status":
        from mainsail.cli.status_cmd import main as status_main

        return status_main(args.file, args.json)
    if args.command == "model":
        from mainsail.workers.checkpoint import generate_checkpoint

        out = generate_checkpoint(args.arch, args.out, seed=args.seed, size=args.size)
        print(f"wrote a {args.size} {args.arch} checkpoint to {out}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
