"""`python -m mainsail.operator`: run the operator (the chart's container runs exactly this).

Authentication comes from the in-cluster service account, or from `KUBECONFIG` outside a
cluster (tests run it so, with a ServiceAccount token bound to the chart's RBAC). Settings come
from `MAINSAIL_OPERATOR_*` variables (see `settings.py`).
"""

from __future__ import annotations

import argparse
import logging

import kopf

from mainsail.operator.autoscaler import Autoscaler
from mainsail.operator.expert_scaler import ExpertScaler
from mainsail.operator.expert_signals import HttpExpertRouter
from mainsail.operator.handlers import Runtime, build_registry
from mainsail.operator.kube import RestKubeApi, api_client_from_environment
from mainsail.operator.reconciler import Reconciler
from mainsail.operator.router_signals import RouterScrape
from mainsail.operator.settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mainsail.operator", description=__doc__)
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch only this namespace "
        "(repeatable); default: all namespaces",
    )  # fmt: skip
    parser.add_argument(
        "--liveness",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per handled event is too much at hundreds of deployments
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    client = api_client_from_environment()
    api = RestKubeApi(client, settings.field_manager, settings.request_timeout_seconds)
    autoscaler = Autoscaler(api, RouterScrape(settings.request_timeout_seconds), settings)
    experts = ExpertScaler(api, HttpExpertRouter(settings.request_timeout_seconds), settings)
    runtime = Runtime(Reconciler(api, settings), settings, autoscaler, experts)
    kopf.run(
        registry=build_registry(runtime),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
