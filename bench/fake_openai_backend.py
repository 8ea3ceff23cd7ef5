"""A fast fake model server speaking both OpenAI HTTP and Mainsail's gRPC Worker API.

Why: to compare routers we put each in front of the same backends. Peer routers proxy OpenAI
HTTP; Mainsail's router talks the gRPC `Worker` service. This one process serves both from
one `FakeEngine` (`mainsail.workers.fake_engine`), so a request yields the same tokens with the
same timing whichever way it arrives:

- HTTP (a bare ASGI app on uvicorn): `POST /v1/completions`, `POST /v1/chat/completions`
  (streamed as SSE when `stream` is true, one event per token, the tokens that are ready
  together in one write, with `stream_options.include_usage`), `GET /v1/models`,
  `GET /health`, and `GET /stats` (requests served per protocol, for the benchmark's spread);
- gRPC: the real `WorkerService` over the same engine, registered with a Mainsail router by the
  real `Registrar` when `--router host:port` is given, and guarded by the worker token
  (`MAINSAIL_WORKER_TOKEN`, which the router must share), as `mainsail.workers.host` does.

Usage: `python bench/fake_openai_backend.py --ready-file F [--router 127.0.0.1:50051]`; the ready
file receives `{"http_port": ..., "grpc_port": ...}` once both are serving.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import uvicorn

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.server import bind_socket
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.request_contract import DEFAULT_MAX_TOKENS
from mainsail.spec.worker_auth import WorkerCredential, token_guard
from mainsail.workers.engine import EngineRequest, SamplingParams
from mainsail.workers.fake_engine import FakeEngine
from mainsail.workers.kv_publisher import KVEventHub
from mainsail.workers.registration import Registrar
from mainsail.workers.service import WorkerService
from mainsail.workers.submit_streams import coalesced

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_NUM_SEQS = 4096  # never the limit: the benchmark measures routers, not admission


class OpenAIApp:
    """The HTTP side: OpenAI shapes over ``engine``, one SSE event per token."""

    def __init__(self, engine: FakeEngine, model: str) -> None:
        self.engine = engine
        self.model = model
        self.http_requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path in ("/health", "/health_generate"):
            await _json(send, {"status": "ok"})
        elif method == "GET" and path == "/v1/models":
            model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
            await _json(send, {"object": "list", "data": [model]})
        elif method == "GET" and path == "/stats":
            await _json(send, {"http": self.http_requests, "total": self.engine.finished})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await self._generate(json.loads(body), path.endswith("chat/completions"), send)
        else:
            await _json(send, {"error": {"message": f"no route {method} {path}"}}, 404)

    async def _generate(self, body: dict[str, Any], chat: bool, send: Send) -> None:
        self.http_requests += 1
        prompt = body.get("messages") if chat else body.get("prompt")
        n_prompt = len(prompt) if isinstance(prompt, list) else len(str(prompt)) // 4
        max_tokens = int(
            body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        )
        req = EngineRequest(
            uuid.uuid4().hex, [0] * max(1, n_prompt), SamplingParams(max_tokens=max_tokens)
        )
        rid = ("chatcmpl-" if chat else "cmpl-") + req.request_id[:24]
        kind = "chat.completion" if chat else "text_completion"
        frame = {"id": rid, "created": int(time.time()), "model": body.get("model", self.model)}
        usage: dict[str, int] = {}
        if not body.get("stream"):
            text = []
            async for out in self.engine.generate(req):
                text.append(out.new_text)
                usage = {
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                }
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": "".join(text)}
            else:
                choice["text"] = "".join(text)
            await _json(send, {**frame, "object": kind, "choices": [choice], "usage": usage})
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk_kind = "chat.completion.chunk" if chat else "text_completion"
        # Tokens that are ready together go out in one write (one SSE event each; the end of
        # the stream with the last), as the gRPC side sends them in one message: both paths
        # get the same coalescing.
        events: list[bytes] = []
        async for batch in coalesced(self.engine.generate(req)):
            events = []
            for out in batch:
                finish = out.finish_reason if out.finished else None
                choice = {"index": 0, "logprobs": None, "finish_reason": finish}
                if chat:
                    choice["delta"] = {"content": out.new_text}
                else:
                    choice["text"] = out.new_text
                usage = {
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                }
                events.append(_event({**frame, "object": chunk_kind, "choices": [choice]}))
            if not batch[-1].finished:
                await send(_sse(b"".join(events)))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            events.append(_event({**frame, "object": chunk_kind, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _sse(data: bytes) -> MutableMapping[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _json(send: Send, obj: dict[str, Any], status: int = 200) -> None:
    data = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def serve(args: argparse.Namespace) -> None:
    """Serve HTTP and gRPC until SIGTERM/SIGINT; register with the router if asked."""
    engine = FakeEngine(token_delay=args.token_delay)
    hub = KVEventHub(args.worker_id, engine.drain_kv_events, engine.kv_snapshot)
    hub.start()
    service = WorkerService(args.worker_id, engine, hub, max_num_seqs=MAX_NUM_SEQS)
    credential = WorkerCredential.from_env()
    server = grpc.aio.server(interceptors=[token_guard(credential, "worker")])
    pb_grpc.add_WorkerServicer_to_server(service, server)
    grpc_port = server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    await server.start()
    sock = bind_socket(args.host, args.http_port)  # the router's own: TCP_NODELAY
    config = uvicorn.Config(
        OpenAIApp(engine, args.model), log_level="warning", lifespan="off", access_log=False
    )
    http = uvicorn.Server(config)
    http_task = asyncio.create_task(http.serve(sockets=[sock]))
    tasks = [http_task]
    if args.router:
        kv = EngineSettings().kv_hash()
        info = pb.WorkerInfo(
            worker_id=args.worker_id,
            address=f"{args.host}:{grpc_port}",
            role="unified",
            model=args.model,
            max_model_len=EngineSettings().max_model_len,
            max_num_seqs=MAX_NUM_SEQS,
            kv_hash=pb.KVHashParams(
                block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
            ),
        )
        registrar = Registrar(args.router, info, service.load_snapshot, credential=credential)
        tasks.append(asyncio.create_task(registrar.run()))
    while not http.started:
        await asyncio.sleep(0.01)
    gc.collect()
    gc.freeze()  # as the router does: no ~35 ms full collections over start-up objects
    ports = {"http_port": sock.getsockname()[1], "grpc_port": grpc_port}
    Path(args.ready_file).write_text(json.dumps(ports))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    http.should_exit = True
    await server.stop(grace=0.5)
    await hub.stop()
    for task in tasks:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--router", help="Mainsail router fleet port (host:port) to register with.")
    parser.add_argument("--worker-id", default="fake-0")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--token-delay", type=float, default=0.0, help="Seconds between tokens.")
    parser.add_argument("--ready-file", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
