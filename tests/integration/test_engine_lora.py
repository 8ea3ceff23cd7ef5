"""LoRA adapters on the real engine, checked against Hugging Face `transformers` + `peft`.

`peft` applying the same PEFT-layout adapter to the same generated checkpoint is the reference
no one here wrote: the engine's greedy tokens with adapter X must equal the reference's, and
the log-probabilities it reports must match a full-sequence reference forward within ``ATOL``.
Then: adapters and the base model mixed in one step give what each gives alone, an adapter
really changes the output (so the comparisons cannot pass vacuously), different adapters never
share prefix-cache blocks, and bad adapters or adapter names are refused with clear errors.
Float32 on CPU, greedy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from mainsail.spec.adapters import Adapter
from mainsail.workers.checkpoint import generate_adapter, generate_checkpoint
from mainsail.workers.engine import (
    AsyncEngine,
    Engine,
    EngineConfig,
    EngineInputError,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)
from mainsail.workers.host import WorkerHost
from mainsail.workers.models import CheckpointError
from mainsail.workers.worker_spec import WorkerSpec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ATOL = 1e-4
NEW_TOKENS = 8
PROMPT_LENGTHS = (1, 9, 33, 70)
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


def _prompt(n: int, salt: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(1000 * salt + n)
    return torch.randint(3, 512, (n,), generator=g).tolist()


def _drain(engine: Engine) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(10_000):
        if not engine.has_unfinished():
            return outs
        for out in engine.step():
            assert out.error is None, out.error
            outs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish within the step bound")


def _generate(
    engine: Engine,
    requests: Mapping[str, tuple[list[int], str | None]],
    params: SamplingParams = GREEDY,
) -> dict[str, list[int]]:
    for rid, (prompt, adapter) in requests.items():
        engine.add_request(EngineRequest(rid, prompt, params, adapter=adapter))
    return {rid: [t for o in outs for t in o.new_token_ids] for rid, outs in _drain(engine).items()}


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    """A checkpoint and two generated adapters of different ranks for it."""
    root = tmp_path_factory.mktemp(f"lora-{request.param}")
    model = generate_checkpoint(request.param, root / "model")
    adapters = {
        "x": generate_adapter(model, root / "x", rank=8, seed=1),
        "y": generate_adapter(model, root / "y", rank=4, seed=2),
    }
    return model, adapters


def _reference(model_dir: Path, adapter_dir: Path | None) -> Any:
    ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        ref = peft.PeftModel.from_pretrained(ref, str(adapter_dir))
    ref.eval()
    return ref


@torch.inference_mode()
def _reference_greedy(ref: Any, prompt: list[int]) -> tuple[list[int], list[float]]:
    """Greedy tokens by full forwards (no KV cache), and each chosen token's logprob."""
    ids = list(prompt)
    logprobs: list[float] = []
    for _ in range(NEW_TOKENS):
        logits = ref(input_ids=torch.tensor([ids])).logits[0, -1].float()
        token = int(torch.argmax(logits))
        logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        ids.append(token)
    return ids[len(prompt) :], logprobs


@pytest.mark.parametrize("max_batched_tokens", [512, 16])
def test_greedy_tokens_and_logprobs_match_peft(
    setup: tuple[Path, dict[str, Path]], max_batched_tokens: int
) -> None:
    """Every prompt with each adapter (all in one engine, chunked prefill too) equals
    `peft` on `transformers`."""
    model, adapters = setup
    config = EngineConfig(
        max_model_len=256, max_batched_tokens=max_batched_tokens, adapters=adapters
    )
    engine = Engine(model, config)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=1)
    for name in adapters:
        for n in PROMPT_LENGTHS:
            engine.add_request(EngineRequest(f"{name}-{n}", _prompt(n), params, adapter=name))
    outs = _drain(engine)
    worst = 0.0
    for name, adapter_dir in adapters.items():
        ref = _reference(model, adapter_dir)
        for n in PROMPT_LENGTHS:
            want_tokens, want_lp = _reference_greedy(ref, _prompt(n))
            got = outs[f"{name}-{n}"]
            tokens = [t for o in got for t in o.new_token_ids]
            assert tokens == want_tokens, (name, n)
            lps = [lp for o in got for lp in (o.logprobs or [])]
            for token, lp, want in zip(tokens, lps, want_lp, strict=True):
                worst = max(worst, abs(lp[token] - want))
    assert worst < ATOL


def test_adapter_changes_the_output(setup: tuple[Path, dict[str, Path]]) -> None:
    model, adapters = setup
    engine = Engine(model, EngineConfig(max_model_len=256, adapters=adapters))
    prompts = {f"{a}-{n}": (_prompt(n, 3), a) for n in (5, 40) for a in ("x", "y", None)}
    got = _generate(engine, prompts)
    for n in (5, 40):
        assert got[f"x-{n}"] != got[f"None-{n}"]
        assert got[f"y-{n}"] != got[f"None-{n}"]
        assert got[f"x-{n}"] != got[f"y-{n}"]


def test_mixed_batch_equals_each_alone(setup: tuple[Path, dict[str, Path]]) -> None:
    """Adapter x, adapter y and the base model in the same steps (prefill and decode rows
    interleaved) give exactly what each request gives alone."""
    model, adapters = setup
    config = EngineConfig(max_model_len=256, max_batched_tokens=512, adapters=adapters)
    kinds: list[str | None] = ["x", "y", None]
    requests = {f"r{i}": (_prompt(3 + 11 * i, salt=i), kinds[i % 3]) for i in range(12)}
    requests["same-x"] = (_prompt(20, 9), "x")
    requests["same-y"] = (_prompt(20, 9), "y")
    requests["same-base"] = (_prompt(20, 9), None)
    batched = _generate(Engine(model, config), requests)
    for rid, req in requests.items():
        alone = _generate(Engine(model, config), {rid: req})
        assert alone[rid] == batched[rid], rid
    # An engine without adapters gives the base requests the same tokens too.
    base = Engine(model, EngineConfig(max_model_len=256, max_batched_tokens=512))
    for rid, (prompt, adapter) in requests.items():
        if adapter is None:
            assert _generate(base, {rid: (prompt, None)})[rid] == batched[rid]


def test_batch_of_one_adapter_equals_alone(setup: tuple[Path, dict[str, Path]]) -> None:
    """A step whose every row uses the same adapter (the no-index fast path)."""
    model, adapters = setup
    config = EngineConfig(max_model_len=256, adapters=adapters)
    requests = {f"r{i}": (_prompt(4 + 9 * i, salt=20 + i), "y") for i in range(6)}
    batched = _generate(Engine(model, config), requests)
    for rid in ("r0", "r5"):
        assert _generate(Engine(model, config), {rid: requests[rid]})[rid] == batched[rid]


def test_adapters_never_share_prefix_cache_blocks(setup: tuple[Path, dict[str, Path]]) -> None:
    model, adapters = setup
    engine = Engine(model, EngineConfig(max_model_len=256, block_size=16, adapters=adapters))
    prompt = _prompt(64, 5)
    first = {a: _generate(engine, {f"first-{a}": (prompt, a)})[f"first-{a}"] for a in "xy"}
    base = _generate(engine, {"base": (prompt, None)})["base"]
    assert engine.metrics().prefix_hit_tokens == 0
    # The cache does work within one adapter: the same prompt again hits, same tokens.
    for a in "xy":
        engine.add_request(EngineRequest(f"again-{a}", prompt, GREEDY, adapter=a))
        outs = _drain(engine)[f"again-{a}"]
        assert outs[-1].cached_tokens >= 48
        assert [t for o in outs for t in o.new_token_ids] == first[a]
    assert _generate(engine, {"base-again": (prompt, None)})["base-again"] == base
    fresh = Engine(model, EngineConfig(max_model_len=256, adapters=adapters))
    for a in "xy":
        assert _generate(fresh, {a: (prompt, a)})[a] == first[a]


def test_unknown_adapter_is_refused(setup: tuple[Path, dict[str, Path]]) -> None:
    model, adapters = setup
    engine = Engine(model, EngineConfig(max_model_len=256, adapters=adapters))
    assert engine.adapters == ["x", "y"]
    with pytest.raises(EngineInputError, match="'nope'"):
        engine.add_request(EngineRequest("r", [5, 6, 7], GREEDY, adapter="nope"))
    bare = Engine(model, EngineConfig(max_model_len=256))
    with pytest.raises(EngineInputError, match="'x' is not loaded"):
        bare.add_request(EngineRequest("r", [5, 6, 7], GREEDY, adapter="x"))
    assert not engine.has_unfinished() and not bare.has_unfinished()


def test_corrupt_adapter_fails_engine_start(
    setup: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    model, adapters = setup
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((adapters["x"] / "adapter_config.json").read_text())
    (bad / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"adapter 'bad'.*cannot read"):
        Engine(model, EngineConfig(max_model_len=256, adapters={"bad": bad}))
    with pytest.raises(CheckpointError, match=r"adapter 'gone'.*does not exist"):
        Engine(model, EngineConfig(max_model_len=256, adapters={"gone": tmp_path / "gone"}))
    wrong_rank = tmp_path / "wrong-rank"
    wrong_rank.mkdir()
    cfg = json.loads((adapters["x"] / "adapter_config.json").read_text())
    (wrong_rank / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4}))
    (wrong_rank / "adapter_model.safetensors").write_bytes(
        (adapters["x"] / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match=r"lora_A has shape \[8, \d+\], expected \[4, \d+\]"):
        Engine(model, EngineConfig(max_model_len=256, adapters={"w": wrong_rank}))


def test_metrics_name_the_adapters_of_running_and_waiting_requests(
    setup: tuple[Path, dict[str, Path]],
) -> None:
    model, adapters = setup
    engine = Engine(model, EngineConfig(max_model_len=256, max_num_seqs=1, adapters=adapters))
    engine.add_request(EngineRequest("a", _prompt(20, 6), GREEDY, adapter="x"))
    engine.add_request(EngineRequest("b", _prompt(20, 7), GREEDY, adapter="y"))
    engine.add_request(EngineRequest("c", _prompt(20, 8), GREEDY))
    before = engine.metrics()
    assert (before.running_adapters, before.waiting_adapters) == ((), ("x", "y"))
    engine.step()  # one slot: the first request runs, the others wait
    during = engine.metrics()
    assert (during.running_adapters, during.waiting_adapters) == (("x",), ("y",))
    _drain(engine)
    after = engine.metrics()
    assert (after.running_adapters, after.waiting_adapters) == ((), ())
    assert after.e2e.count == after.num_requests_finished == 3


async def test_worker_host_serves_generated_adapters(
    setup: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    """A worker replica built from a `WorkerSpec` (as `mainsail up` builds it from a
    deployment's ``generateRank`` adapters) loads them and applies them per request."""
    model, adapters = setup
    spec = WorkerSpec(
        worker_id="w-lora",
        model_name="tiny",
        model_dir=model,
        adapters=(Adapter(name="x", path=str(adapters["x"])), Adapter(name="g", generate_rank=4)),
    )
    host = WorkerHost(spec)
    await host.start()
    try:
        assert isinstance(host.engine, AsyncEngine)
        assert host.engine.engine.adapters == ["g", "x"]
        got: dict[str | None, list[int]] = {}
        for adapter in ("x", "g", None):
            req = EngineRequest(f"r-{adapter}", _prompt(12, 4), GREEDY, adapter=adapter)
            got[adapter] = [t async for o in host.engine.generate(req) for t in o.new_token_ids]
        direct = Engine(model, EngineConfig(adapters={"x": adapters["x"]}))
        assert got["x"] == _generate(direct, {"x": (_prompt(12, 4), "x")})["x"]
        assert len({tuple(v) for v in got.values()}) == 3
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"http://{host.metrics_address}/metrics")).text
        (lora,) = [
            s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "vllm:lora_requests_info"
        ]  # fmt: skip
        assert lora.labels["max_lora"] == "2" and lora.value > 0
    finally:
        await host.stop()
