"""The router's admin HTTP endpoints: who serves what, changed by an operator or a tool.

    GET    /workers                    registered workers and their last reported load
    POST   /workers/<id>/drain         drain a worker (its streams migrate away); DELETE undrains
    POST   /workers/<id>/experts       JSON `{"expertParallel": <n>}`: elastic expert
                                       parallelism (`Router.scale_experts`)
    POST   /requests/<id>/migrate      optional JSON `{"worker": "<id>"}`: move a stream

Why apart from the OpenAI front (`http_api.py`): these are not inference, and every one of
them needs the admin token (`auth.Credentials`; docs/security.md); a router started without
one refuses them all with 403, never trusting whoever reaches the port. The OpenAI front owns
the socket and the dispatch; it asks `owns` which paths are these, `refusal` whether the
caller may, and `endpoints` what serves them.
"""

from __future__ import annotations

from mainsail.router.errors import RouterError, bad_request, not_found
from mainsail.router.front.auth import Credentials
from mainsail.router.front.http_wire import Handler, Request, Response, json_body, json_response
from mainsail.router.routing.router import Router
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV


class AdminApi:
    """The admin endpoints of one router; `HttpFront` dispatches to them."""

    def __init__(self, router: Router, credentials: Credentials) -> None:
        self.router = router
        self.credentials = credentials

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` is an admin path (so it needs the admin token)."""
        return path == "/workers" or path.startswith(("/workers/", "/requests/"))

    def refusal(self, authorization: str | None) -> RouterError | None:
        """Why a call to an admin path is refused, or None when it may go on: 403 for every
        call to a router started without an admin token (no bearer can open it, so the
        answer says how to configure one), 401 without the right bearer."""
        if not self.credentials.admin_enabled:
            message = (
                f"The admin API is disabled: this router has no admin token. Start it with "
                f"{ADMIN_TOKEN_ENV} set and send `Authorization: Bearer <admin token>`."
            )
            return RouterError(403, message, code="admin_disabled")
        if self.credentials.admin_allowed(authorization):
            return None
        message = "This admin endpoint needs `Authorization: Bearer <admin token>`."
        return RouterError(401, message, code="invalid_api_key")

    def endpoints(self, path: str) -> dict[str, Handler] | None:
        """The endpoint per method of admin path ``path``; None for no such path (404)."""
        if path == "/workers":
            return {"GET": self.workers}
        parts = path.strip("/").split("/")
        if len(parts) != 3:
            return None
        kind, ident, action = parts
        if kind == "workers" and action == "drain":

            async def drain(request: Request) -> Response:
                on = request.method == "POST"
                moved = await self.router.drain(ident, on)
                return json_response({"worker": ident, "draining": on, "migrated": moved})

            return {"POST": drain, "DELETE": drain}
        if kind == "workers" and action == "experts":

            async def experts(request: Request) -> Response:
                return await self._scale_experts(ident, request)

            return {"POST": experts}
        if kind == "requests" and action == "migrate":

            async def migrate(request: Request) -> Response:
                return await self._migrate(ident, request)

            return {"POST": migrate}
        return None

    async def workers(self, request: Request) -> Response:
        """Registered workers and their last reported load (for operators and debugging)."""
        data = [
            {
                "id": e.worker_id,
                "role": e.info.role or "unified",
                "address": e.address,
                "metrics_address": e.info.metrics_address,
                "adapters": list(e.info.adapters),
                "running": e.load.running,
                "waiting": e.load.waiting,
                "outstanding": e.outstanding,
                "other_routers_in_flight": e.others,
                "kv_blocks_used": e.load.kv_blocks_used,
                "kv_blocks_total": e.load.kv_blocks_total,
                "draining": e.draining,
                "expert_parallel": e.load.expert_parallel,
                "expert_parallel_target": e.load.expert_parallel_target,
            }
            for e in self.router.registry.entries()
        ]
        return json_response({"object": "list", "data": data})

    async def _scale_experts(self, worker: str, request: Request) -> Response:
        body = json_body(request) if request.body else {}
        degree = body.get("expertParallel") if isinstance(body, dict) else None
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise bad_request("`expertParallel` must be an integer >= 1.", param="expertParallel")
        reply = await self.router.scale_experts(worker, degree)
        current, target = reply.expert_parallel, reply.target
        return json_response({"worker": worker, "expertParallel": current, "target": target})

    async def _migrate(self, request_id: str, request: Request) -> Response:
        body = json_body(request) if request.body else {}
        target = body.get("worker") if isinstance(body, dict) else None
        if target is not None and not isinstance(target, str):
            raise bad_request("`worker` must be a worker id string.", param="worker")
        if target and self.router.registry.get(target) is None:
            raise not_found(f"No worker {target!r} is registered.")
        if not await self.router.migrate(request_id, target):
            raise not_found(f"No request {request_id!r} is streaming here.")
        return json_response({"request": request_id, "migrating": True, "worker": target})
