"""A real worker (real engine on the generated tiny checkpoint) behind a real router serves a
few requests; its own /metrics, scraped over HTTP like Prometheus does, shows what the engine
did, and the router's latency histograms saw the same requests. The chart's dashboard names
only metrics this worker and the router export."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.dashboards import WORKER_NAME, names
from support.documented_metrics import documented, not_exported
from support.fleet import ADMIN_TOKEN, MODEL, fleet

from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.slo import SLO, SLOClass
from mainsail.workers.engine import AsyncEngine
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration

PROMPT = " ".join(f"word{i}" for i in range(60))  # several full KV blocks


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _one(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    (value,) = [v for (n, _), v in samples.items() if n == name]
    return value


async def test_worker_metrics_follow_the_engine(tiny_model_dir: Path) -> None:
    slo = SLO(classes=[SLOClass(name="batch")])
    engine = EngineSettings(max_model_len=512, block_size=16)
    async with fleet(tiny_model_dir, workers=1, engine=engine, slo=slo) as f:
        host = f.workers[0]
        (entry,) = f.router.registry.entries()
        assert host.metrics_address and entry.info.metrics_address == host.metrics_address
        url = f"http://{host.metrics_address}/metrics"
        async with httpx.AsyncClient(timeout=60) as http:
            before = _samples((await http.get(url)).text)
            assert _one(before, "mainsail_worker_requests_finished_total") == 0
            generated = 0
            for i, slo_class in enumerate(("", "", "batch")):  # the same prompt three times
                body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4 + i, "temperature": 0}
                if slo_class:
                    body["slo_class"] = slo_class
                reply = await http.post(f"{f.http}/v1/completions", json=body, headers=f.key())
                assert reply.status_code == 200, reply.text
                generated += reply.json()["usage"]["completion_tokens"]
            scrape = await http.get(url)
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            listed = (await http.get(f"{f.http}/workers", headers=admin)).json()["data"]
            assert [w["metrics_address"] for w in listed] == [host.metrics_address]
            router_text = (await http.get(f"{f.http}/metrics")).text
        assert scrape.headers["content-type"].startswith("text/plain")
        text = scrape.text
        samples = _samples(text)
        assert PROMPT.split()[0] not in text  # counts only, never a prompt

        assert _one(samples, "mainsail_worker_requests_finished_total") == 3
        assert _one(samples, "vllm:generation_tokens_total") == generated
        hits = _one(samples, "vllm:prefix_cache_hits_total")
        queries = _one(samples, "vllm:prefix_cache_queries_total")
        assert 0 < hits < queries  # the repeats hit the cached prefix; the first did not
        assert 0.0 <= _one(samples, "vllm:kv_cache_usage_perc") <= 1.0
        assert _one(samples, "vllm:num_requests_running") == 0
        assert _one(samples, "vllm:num_requests_waiting") == 0
        assert _one(samples, "vllm:time_to_first_token_seconds_count") == 3
        assert _one(samples, "vllm:e2e_request_latency_seconds_count") == 3
        assert _one(samples, "vllm:inter_token_latency_seconds_count") == generated - 3
        model = [labels for (n, labels), _ in samples.items() if n == "vllm:num_requests_running"]
        assert model == [(("model_name", MODEL),)]

        assert isinstance(host.engine, AsyncEngine)
        config = host.engine.engine.config
        ((_, cache_labels),) = [k for k in samples if k[0] == "vllm:cache_config_info"]
        assert dict(cache_labels) == {
            "block_size": str(config.block_size),
            "num_gpu_blocks": str(config.total_kv_blocks),
        }
        assert config.block_size == 16
        ((_, lora_labels),) = [k for k in samples if k[0] == "vllm:lora_requests_info"]
        assert dict(lora_labels) == {
            "max_lora": "0",
            "running_lora_adapters": "",
            "waiting_lora_adapters": "",
        }

        # The dashboard's worker panels query only names this worker exports.
        missing = names(WORKER_NAME) - {name for name, _ in samples}
        assert not missing, f"dashboard queries metrics a worker does not export: {missing}"
        # So does every metric docs/protocol.md documents for workers.
        families = {family.name for family in text_string_to_metric_families(text)}
        exported = families | {name for name, _ in samples}
        undocumented = not_exported(documented("Worker metrics"), exported)
        assert not undocumented, f"documented, not exported by a worker: {undocumented}"

        # The router's histograms saw the same requests, per pool and SLO class.
        routed = _samples(router_text)
        key = (("model", MODEL), ("pool", "unified"), ("slo_class", "none"))
        assert routed[("mainsail_router_ttft_seconds_count", key)] == 2
        assert routed[("mainsail_router_e2e_seconds_count", key)] == 2
        batch = (("model", MODEL), ("pool", "unified"), ("slo_class", "batch"))
        assert routed[("mainsail_router_e2e_seconds_count", batch)] == 1
        itl = sum(
            v for (n, _), v in routed.items() if n.endswith("inter_token_latency_seconds_count")
        )
        # Tokens after each request's first chunk (a loaded worker may coalesce several
        # tokens into the first; the fake-worker tier checks the exact count).
        assert 0 <= itl <= generated - 3
        assert ("mainsail_router_inter_token_latency_seconds_count", key) in routed
    # Stopped with its worker: the port is released.
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(url)


async def test_taken_fixed_port_falls_back_and_fake_engine_serves_the_names(
    tiny_model_dir: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        spec = WorkerSpec(
            worker_id="fake",
            model_name=MODEL,
            model_dir=tiny_model_dir,
            fake_engine=True,
            metrics_port=busy,
            engine=EngineSettings(block_size=32),
        )
        host = WorkerHost(spec)
        await host.start()
        try:
            port = int(host.metrics_address.rsplit(":", 1)[1])
            assert port not in (0, busy)
            async with httpx.AsyncClient(timeout=10) as http:
                samples = _samples((await http.get(f"http://{host.metrics_address}/metrics")).text)
        finally:
            await host.stop()
    ((_, cache_labels),) = [k for k in samples if k[0] == "vllm:cache_config_info"]
    assert dict(cache_labels)["block_size"] == "32"
    assert _one(samples, "mainsail_worker_requests_finished_total") == 0
    off = WorkerHost(spec.model_copy(update={"metrics_port": None}))
    await off.start()
    try:
        assert off.metrics_address == ""
    finally:
        await off.stop()
