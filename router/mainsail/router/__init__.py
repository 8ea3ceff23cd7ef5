"""The global router: OpenAI HTTP and gRPC fronts, worker registry, scheduling, KV index.

Both fronts call one internal path, `Router.generate` (see `route.py`); everything that
decides where a request goes is a pure policy under `scheduling/`.
"""
