"""The client- and worker-facing fronts: the OpenAI-compatible HTTP API (our own HTTP server,
wire types, request schema, pre-rendered response shapes), the gRPC services, and API-key
auth. Fronts call `routing.Router`; nothing below imports them."""
