"""Served generation: the OpenAI client and engine against a scripted localhost server, then (slow) real vLLM.

Fast tests use ``FakeServer``, a mock of an OpenAI-compatible server (``tests.stand_in_server``: a
real HTTP server on 127.0.0.1 whose answers are scripted per prompt), to pin down ordering, seeds, retries, failures
and the clear error of an unreachable server. Slow tests start real ``vllm`` servers on localhost
(module-scoped, few starts): the caption stage on images served and in-process, the reason stage
served, and the fault drill (SIGKILL mid-stage, restart, rerun: every key exactly once).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from rollout.engine_api import FINISH_LENGTH, PROMPT_TOO_LONG, EngineConfig, Failure, Request, SamplingParams
from rollout.engines import make_engine
from rollout.local_server import free_port
from rollout.openai_client import (
    ENGINE_ERROR,
    Choice,
    OpenAIClient,
    RequestFailure,
    ServerUnreachable,
    normalise_base_url,
)
from rollout.openai_engine import server_mm_args
from rollout.store import TRANSIENT_REASONS
from sophia_common.cli import UserError
from tests.multirank import REPO, subprocess_env
from tests.stand_in_server import StandInServer


class FakeServer(StandInServer):
    """Mock OpenAI-compatible server: ``/v1/models`` lists ``tiny``; completions answer by prompt.

    Prompt text ``flaky`` fails with 503 twice then answers; ``broken`` always answers 500;
    ``long`` gets a 400 naming the context length; ``odd`` a 400 about something else. Each choice
    echoes prompt, seed and max_tokens, with ``index + 1`` token ids.
    """

    def __init__(self, max_model_len: int = 64):
        self.attempts: Counter[str] = Counter()
        self.models = ({"id": "tiny", "max_model_len": max_model_len},)
        super().__init__()

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        prompt = body.get("prompt") if path == "/v1/completions" else json.dumps(body["messages"])
        label = prompt if isinstance(prompt, str) else f"ids:{len(prompt)}"
        self.attempts[label] += 1
        if label == "flaky" and self.attempts[label] <= 2 or label == "broken":
            return (503 if label == "flaky" else 500), {"error": "busy"}
        if label == "long":
            return 400, {"message": "This model's maximum context length is 64 tokens."}
        if label == "odd":
            return 400, {"message": "unknown field"}
        choices = [{"index": i, "text": f"{label}|{body.get('seed')}|{body['max_tokens']}|{i}",
                    "token_ids": list(range(i + 1)), "finish_reason": "length" if i else "stop"}
                   for i in reversed(range(body["n"]))]  # out of order on purpose
        return 200, {"choices": choices, "usage": {"completion_tokens": 99}}


def test_client_keeps_order_seeds_and_per_choice_token_counts():
    with FakeServer() as server:
        client = OpenAIClient(server.base_url + "/v1/", concurrency=4, backoff_s=0.01)
        assert client.health() == "tiny" and client.max_model_len == 64
        seen: list[int] = []
        prompts = [f"p{i}" for i in range(9)]
        results = client.complete(prompts, n=2, max_tokens=7, seeds=list(range(100, 109)),
                                  on_result=lambda index, result: seen.append(index))
    assert sorted(seen) == list(range(9))  # each finished request reported once, as it finished
    for i, result in enumerate(results):
        assert result == [Choice(f"p{i}|{100 + i}|7|0", "stop", 1), Choice(f"p{i}|{100 + i}|7|1", "length", 2)]
    assert {body["model"] for body in server.bodies} == {"tiny"}


def test_client_retries_transient_errors_and_reports_the_rest():
    with FakeServer() as server:
        client = OpenAIClient(server.base_url, model="tiny", retries=2, backoff_s=0.01, concurrency=2)
        flaky, broken, long, odd = client.complete(["flaky", "broken", "long", "odd"], max_tokens=4)
    assert flaky == [Choice("flaky|None|4|0", "stop", 1)] and server.attempts["flaky"] == 3
    assert isinstance(broken, RequestFailure) and broken.reason == ENGINE_ERROR and "HTTP 500" in broken.detail
    assert server.attempts["broken"] == 3  # retries + 1, then a reject with its reason
    assert long == RequestFailure(PROMPT_TOO_LONG, long.detail) and server.attempts["long"] == 1
    assert odd.reason == ENGINE_ERROR and "HTTP 400" in odd.detail and server.attempts["odd"] == 1


def test_unreachable_server_is_one_clear_error_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    client = OpenAIClient(url, model="tiny", retries=1, backoff_s=0.01)
    with pytest.raises(ServerUnreachable, match=f"server at {url} "):
        client.health()
    with pytest.raises(ServerUnreachable, match=f"{url} does not answer"):
        client.complete(["a", "b", "c"])
    with pytest.raises(UserError, match="not an http"):
        normalise_base_url("localhost:8000")
    assert normalise_base_url("http://h:1/v1/") == "http://h:1"


def _reasoner_config(tiny_root, base_url: str, **extra) -> EngineConfig:
    return EngineConfig(model=str(tiny_root["reasoner"]), engine="openai", base_url=base_url, max_tokens=50,
                        seed=0, retries=0, **extra)


def test_openai_engine_renders_locally_cuts_max_tokens_and_rejects_long_prompts(tiny_root, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_root["reasoner"])
    short = ({"role": "user", "content": "Is 7 > 5?"},)
    ids = tokenizer.encode(tokenizer.apply_chat_template(list(short), tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)
    monkeypatch.setenv("TEST_SOPHIA_KEY", "sekrit")
    with FakeServer(max_model_len=len(ids) + 20) as server:
        config = _reasoner_config(tiny_root, server.base_url, api_key_env="TEST_SOPHIA_KEY")
        with make_engine(config, "reasoner.easy", vision=False) as engine:
            requests = [Request(short, key="a"), Request(({"role": "user", "content": "word " * 200},), key="b")]
            ok, too_long = engine.generate(requests, SamplingParams.of(config, n=2))
    assert isinstance(too_long, Failure) and too_long.reason == PROMPT_TOO_LONG
    (body,) = server.bodies  # the long prompt never left the client
    assert body["prompt"] == ids and body["max_tokens"] == 20 and body["n"] == 2
    from rollout.engine_api import request_seed

    assert body["seed"] == request_seed(0, "a")
    assert [(c.num_tokens, c.finish_reason) for c in ok] == [(1, "stop"), (2, FINISH_LENGTH)]
    assert server.headers[0]["Authorization"] == "Bearer sekrit"


def test_openai_engine_finds_its_server_or_says_what_is_missing(tiny_root, tmp_path, monkeypatch):
    endpoint = tmp_path / "reasoner.endpoint"
    config = EngineConfig(engine="openai", endpoint_file=str(endpoint), served_model="tiny")
    with pytest.raises(UserError, match="^rollout.reasoner.easy.endpoint_file: .*does not exist"):
        make_engine(config, "reasoner.easy", vision=False)
    for section in ("eval.policy", "grpo.generator"):  # bug caught: every error named rollout.<role>
        with pytest.raises(UserError, match=f"^{section}.endpoint_file: .*does not exist"):
            make_engine(config, section, vision=True)
    with pytest.raises(UserError, match="needs base_url .* or endpoint_file"):
        make_engine(EngineConfig(engine="openai"), "reasoner.easy", vision=False)
    with pytest.raises(UserError, match="api_key_env: the environment variable NOPE_UNSET_KEY"):
        monkeypatch.delenv("NOPE_UNSET_KEY", raising=False)
        make_engine(_reasoner_config(tiny_root, "http://127.0.0.1:9", api_key_env="NOPE_UNSET_KEY"),
                    "reasoner.easy", vision=False)
    with FakeServer() as server:
        endpoint.write_text(server.base_url + "\n")
        with make_engine(config, "reasoner.easy", vision=False) as engine:  # no local model: chat completions
            (result,) = engine.generate([Request(({"role": "user", "content": "hi"},), key="k")],
                                        SamplingParams(n=1, max_tokens=5))
        with pytest.raises(UserError, match="serves \\['tiny'\\], not 'other'"):
            make_engine(EngineConfig(engine="openai", base_url=server.base_url, served_model="other"),
                        "reasoner.easy", vision=False)
    assert result[0].text.startswith('[{"role": "user", "content": "hi"}]|')
    assert "messages" in server.bodies[0] and "prompt" not in server.bodies[0]


# ---------------------------------------------------------------- real vLLM on localhost (slow)

COLOURS = [(220, 30, 30), (30, 160, 60), (20, 60, 200), (240, 200, 20), (120, 40, 160), (10, 10, 10)]


@pytest.fixture(scope="module")
def vl_task(tiny_root, tmp_path_factory):
    """The vLLM-ready tiny InternVL policy and an input file of PNG images (one of them corrupt)."""
    from PIL import Image

    from sophia_tools.tiny import build_vllm_policy

    policy = build_vllm_policy(tiny_root["reasoner"].parent / "vllm_policy")
    work = tmp_path_factory.mktemp("served")
    rows = []
    for index in range(16):
        image = work / f"img{index}.png"
        Image.new("RGB", (120 + 20 * index, 90), COLOURS[index % len(COLOURS)]).save(image)
        rows.append({"id": f"q{index:02d}", "image": str(image), "question": f"How many shapes? ({index})",
                     "answer": str(index % 5)})
    (work / "corrupt.png").write_bytes(b"not a png")
    rows.append({"id": "corrupt", "image": str(work / "corrupt.png"), "question": "?", "answer": "1"})
    inputs = work / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return policy, work, inputs


@pytest.fixture(scope="module")
def policy_server(vl_task):
    """One ``vllm serve`` of the tiny policy for this module (the fault drill restarts it in place)."""
    pytest.importorskip("vllm")
    from rollout.local_server import LocalVLLMServer

    policy, work, _ = vl_task
    server = LocalVLLMServer(policy, work / "server.log", max_model_len=2048, max_num_seqs=16,
                             extra_args=server_mm_args(str(policy), max_tiles=1),
                             env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    with server:
        yield server


def rollout_cli(stage: str, task, store, *overrides: str, timeout: float = 900):
    """``sophia-rollout STAGE`` on the tiny recipe with the task's inputs and policy as captioner."""
    policy, _, inputs = task
    command = [sys.executable, "-m", "sophia_tools.rollout_cli", stage, "--config", str(REPO / "configs" / "tiny.yaml"),
               f"inputs=[{inputs}]", f"store_dir={store}", "batch_size=2", "captioner.max_tiles=1",
               "captioner.max_tokens=24", f"captioner.model={policy}",
               *overrides]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(VLLM_CPU_KVCACHE_SPACE="1"))


def stored(store, table: str, keys: tuple[str, ...]) -> tuple[Counter, Counter]:
    """(stored keys, rejected keys with their reason) of one stage table, counted (duplicates show)."""
    from rollout.store import Store

    opened = Store(store)
    rows = opened.table(table).read(list(keys)).to_pylist() if opened.table(table).shard_paths() else []
    rejects = opened.rejects.read().to_pylist() if opened.rejects.shard_paths() else []
    stage = "caption" if table == "captions" else "reason"
    return (Counter(tuple(row[key] for key in keys) for row in rows),
            Counter((tuple(row[key] for key in keys), row["reason"]) for row in rejects if row["stage"] == stage))


def check_captions(store, ids: list[str], K: int) -> None:
    from rollout.store import Store

    captions, rejected = stored(store, "captions", ("id", "k"))
    assert set(captions) == {(item, k) for item in ids for k in range(K)} and set(captions.values()) == {1}
    assert set(rejected) == {(("corrupt", k), "unreadable_image") for k in range(K)}
    rows = Store(store).table("captions").read(["text", "num_tokens", "finish_reason"]).to_pylist()
    assert all(1 <= row["num_tokens"] <= 24 and row["finish_reason"] in ("stop", "length") for row in rows)
    assert all(row["finish_reason"] == "stop" or row["num_tokens"] == 24 for row in rows)
    assert len({row["text"] for row in rows}) > len(rows) // 2  # sampled per request, not one text


@pytest.mark.slow
def test_caption_stage_on_real_vllm_with_images_served_and_in_process(vl_task, policy_server):
    policy, work, inputs = vl_task
    ids = [f"q{index:02d}" for index in range(16)]
    served = rollout_cli("caption", vl_task, work / "store-served", "captioner.engine=openai",
                         f"captioner.base_url={policy_server.base_url}", "captioner.K=2")
    assert served.returncode == 0, served.stderr[-4000:]
    check_captions(work / "store-served", ids, K=2)
    in_process = rollout_cli("caption", vl_task, work / "store-vllm", "captioner.engine=vllm",
                             "captioner.K=2", "captioner.dtype=bfloat16",
                             "captioner.enforce_eager=true", "captioner.max_model_len=2048")
    assert in_process.returncode == 0, in_process.stderr[-4000:]
    check_captions(work / "store-vllm", ids, K=2)


@pytest.mark.slow
def test_fault_drill_server_killed_mid_reason_stage_then_rerun_stores_every_key_once(vl_task, policy_server):
    """SIGKILL the server while the reason stage runs: one clear error; restart; rerun: each key once."""
    policy, work, inputs = vl_task
    store = work / "store-drill"
    captioned = rollout_cli("caption", vl_task, store, "captioner.engine=openai",
                            f"captioner.base_url={policy_server.base_url}", "captioner.K=1")
    assert captioned.returncode == 0, captioned.stderr[-4000:]
    reason = ["N=2", "reasoner.easy.engine=openai", f"reasoner.easy.base_url={policy_server.base_url}",
              f"reasoner.easy.model={policy}", "reasoner.easy.max_tokens=64", "reasoner.easy.retries=1"]
    command = [sys.executable, "-m", "sophia_tools.rollout_cli", "reason", "--config",
               str(REPO / "configs" / "tiny.yaml"), f"inputs=[{inputs}]", f"store_dir={store}", "batch_size=2",
               *reason]
    stage = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=subprocess_env())
    shards = store / "trajectories"
    deadline = time.monotonic() + 600
    while not (shards.is_dir() and any(shards.glob("*.parquet"))) and stage.poll() is None:
        assert time.monotonic() < deadline, "the reason stage wrote nothing within 600 s"
        time.sleep(0.2)
    policy_server.kill()
    _, stderr = stage.communicate(timeout=300)
    assert stage.returncode == 2, stderr[-3000:]  # stopped with a user error, not finished before the kill
    assert f"server at {policy_server.base_url} does not answer" in stderr
    partial, _ = stored(store, "trajectories", ("id", "k", "n"))
    wanted = {(f"q{index:02d}", 0, n) for index in range(16) for n in range(2)}
    assert 0 < len(partial) < len(wanted)
    policy_server.start()  # the same port: the recipe does not change
    rerun = rollout_cli("reason", vl_task, store, *reason)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    trajectories, rejected = stored(store, "trajectories", ("id", "k", "n"))
    # A random caption can be empty: a reject for good (empty_caption); transient rejects are retried.
    final_rejects = Counter(key for key, reason in rejected if reason not in TRANSIENT_REASONS)
    assert set(trajectories.values()) == {1} and set(final_rejects.values()) <= {1}  # nothing twice
    assert set(trajectories) | set(final_rejects) == wanted and not set(trajectories) & set(final_rejects)
    report = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert report["written"] == len(trajectories) - len(partial)  # the rerun wrote only what was missing
    assert report["already_done"] + report["written"] + report["rejected"] == len(wanted)
