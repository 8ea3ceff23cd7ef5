"""The global router: OpenAI HTTP and gRPC fronts, worker registry, scheduling, KV index.

Grouped by what each part talks to: `front/` (clients), `routing/` (the `Router`: one request
path for both fronts, `routing/router.py`), `fleet/` (workers), `scheduling/` (pure policies
deciding where a request goes) and `kvindex/`. `server.py` assembles them.
"""
