"""The `mainsail up` command: validate the file, start the stack, print how to use it, wait."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import yaml
from pydantic import ValidationError

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.local.ports import MAX_LOCAL_ROUTERS
from mainsail.cli.local.stack import LocalStack, StackOptions
from mainsail.spec.deployment import ModelDeployment


def load_deployment(path: Path | None) -> ModelDeployment:
    """Parse and validate a deployment file; raises ValueError naming the bad field."""
    text = TINY_DEPLOYMENT if path is None else path.read_text()
    where = "embedded default" if path is None else str(path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {exc}") from None
    try:
        return ModelDeployment.model_validate(document)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {field}: {err['msg']}")
        raise ValueError(f"{where}: invalid ModelDeployment\n" + "\n".join(lines)) from None


def usage_text(endpoints: dict[str, object]) -> str:
    """Ready-to-paste curl and openai SDK examples for the running stack."""
    base = endpoints["openai_base_url"]
    model = endpoints["model"]
    routers = endpoints.get("routers")
    replicas = ""
    if isinstance(routers, list) and len(routers) > 1:
        lines = "".join(f"\n    {r['openai_base_url']}  gRPC {r['grpc']}" for r in routers)
        replicas = (
            f"\n  routers      {len(routers)} replicas, active-active (any one serves):{lines}"
        )
    token_file = endpoints.get("admin_token_file")
    if token_file:
        replicas += (
            f"\n  admin API    /workers, drains, migrations need the run's token (file mode 0600):"
            f"\n    curl -s {endpoints['http']}/workers "
            f'-H "Authorization: Bearer $(cat {token_file})"'
        )
    status_file = endpoints.get("status_file")
    if status_file:
        replicas += f"\n  status       mainsail status {status_file}  (expert-parallel degree)"
    return f"""
Mainsail is serving `{model}`:
  OpenAI HTTP  {base}
  gRPC         {endpoints["grpc"]}  (reflection on; service mainsail.proto.v1.Inference)
  metrics      {endpoints["metrics"]}
  redis        {endpoints["redis"]}
  workers      {endpoints["workers"]}{replicas}

Try it:
  curl -s {base}/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "prompt": "The quick brown fox", "max_tokens": 16}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='none'); \\
print(c.chat.completions.create(model='{model}', \\
messages=[{{'role': 'user', 'content': 'Hello!'}}], max_tokens=16).choices[0].message.content)"

Ctrl-C stops everything.
"""


def run_up(args: argparse.Namespace) -> int:
    """Run the stack until a signal arrives; returns the exit code."""
    try:
        deployment = load_deployment(args.file)
    except (OSError, ValueError) as exc:
        print(f"mainsail up: {exc}", file=sys.stderr)
        return 2
    if args.routers is not None and not 1 <= args.routers <= MAX_LOCAL_ROUTERS:
        print(
            f"mainsail up: --routers must be between 1 and {MAX_LOCAL_ROUTERS}, got {args.routers}",
            file=sys.stderr,
        )
        return 2
    if not args.autoscale_seconds > 0:
        print(
            f"mainsail up: --autoscale-seconds must be > 0, got {args.autoscale_seconds}",
            file=sys.stderr,
        )
        return 2
    options = StackOptions(
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        redis_url=args.redis_url,
        replicas=args.replicas,
        routers=args.routers,
        model_cache=args.model_cache,
        ready_file=args.ready_file,
        autoscale_seconds=args.autoscale_seconds,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    progress = _progress(args.quiet)
    stack = LocalStack(deployment, options, progress)
    code = 0
    try:
        stack.start()
        progress("ready")
        print(usage_text(stack.endpoints()), flush=True)
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(f"mainsail up: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("mainsail up: shutting down", file=sys.stderr, flush=True)
        stack.stop()
    return code


def _progress(quiet: bool):  # type: ignore[no-untyped-def]
    """A progress callback: a spinner line on a terminal, plain lines otherwise."""
    if quiet:
        return lambda message: None
    if sys.stderr.isatty():
        from rich.console import Console

        console = Console(stderr=True)
        status = console.status("starting")
        status.start()

        def show(message: str) -> None:
            if message == "ready":
                status.stop()
                return
            console.log(message)
            status.update(message)

        return show
    return lambda message: print(f"mainsail up: {message}", file=sys.stderr, flush=True)
