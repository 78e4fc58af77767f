"""``sophia-profile rollout``: what the reason stage costs on top of a bare ``LLM.generate``, or served vs in-process.

    sophia-profile rollout [--model DIR] [--captions 64] [--n 4] [--max-tokens 256] [--batch-size 64]
    sophia-profile rollout --engine openai [...]

``--engine vllm`` (default): in one process, with one vLLM engine and the same prompts and sampling
parameters (same per-request seeds, so both draw the same tokens), it times

* ``bare``: one ``LLM.generate`` over every prompt, already rendered and tokenised;
* ``stage``: ``rollout.stages.reason_stage`` end to end on a fresh store holding the same captions:
  reading captions and inputs, rendering the simulated-seeing prompt, tokenising, ``generate`` per
  batch of ``--batch-size`` captions, and writing one trajectory shard per batch;

and reports tokens/s of both and ``overhead = stage_seconds / bare_seconds - 1`` (target ≤ 0.10),
over ``--repeats`` rounds whose order alternates (whichever runs second in a round was seen to be
several percent slower on CPU), resetting vLLM's prefix cache before every timed run so neither
side inherits the other's cache. ``overhead_outside_generate`` is the stage's own time (everything
but ``LLM.generate``) over the bare time: the part of the overhead that is not run-to-run noise.

``--engine openai``: the reason stage end to end through a local vLLM OpenAI-compatible server
(``rollout.local_server``, the ``openai`` engine with a whole batch in flight) and through the
in-process engine, same model, prompts, seeds and vLLM settings, alternating rounds; reports
``served_over_in_process`` = served tokens/s / in-process tokens/s (target ≥ 0.9).

Then it runs the verifier benchmark (``sophia_tools.bench.verifier.run_verifier_bench``). Prints one
JSON object. Without ``--model`` the tiny random reasoner (``sophia_tools.tiny``) is built into
``--tiny-dir``; on CPU, vLLM gets ``enforce_eager`` and ``VLLM_CPU_KVCACHE_SPACE=1`` unless set. A
random model rarely stops early, so completions mostly run to ``--max-tokens``: the numbers measure
the plumbing, not a real model's length distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rollout.engine_api import Engine, EngineConfig, Request, SamplingParams
from rollout.engines import VLLMEngine

CAPTION_TEXT = ("The image is a flat illustration on a white background. In the upper left there are three red "
                "circles of equal size in a row; below them two blue squares, the left one larger. On the right a "
                "green triangle points upwards, with the label 'A' at its top vertex and the number 12 written "
                "under its base. A thin black line joins the middle circle to the triangle. ")


class _Shared(Engine):
    """The benchmark's engine handed to the stage without being closed by it."""

    def __init__(self, engine: Engine):
        self.engine, self.name = engine, engine.name

    def generate(self, requests: list[Request], params: SamplingParams) -> list:
        return self.engine.generate(requests, params)

    def is_fatal(self, error: Exception) -> bool:
        return self.engine.is_fatal(error)


def _write_inputs(work: Path, captions: int) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(work / "image.png")
    path = work / "inputs.jsonl"
    with open(path, "w") as handle:
        for index in range(captions):
            handle.write(json.dumps({"id": f"b{index:05d}", "image": "image.png", "answer": str(index % 7),
                                     "question": f"How many shapes are there in the image, plus {index}?"}) + "\n")
    return path


def _new_run(work: Path, inputs: Path, config: EngineConfig, args: argparse.Namespace, engine: _Shared,
             round_index: int | str):
    """A RolloutRun over a fresh store whose captions table holds one caption per question."""
    from rollout.config import RolloutConfig
    from rollout.pipeline import open_run
    from rollout.sharding import Shard
    from rollout.stages import CAPTIONS, as_arrow

    rollout = RolloutConfig(inputs=[str(inputs)], store_dir=str(work / f"store-{round_index}"), N=args.n,
                            batch_size=args.batch_size)
    rollout.reasoner.easy = config
    run = open_run(rollout, None, Shard(), engine_factory=lambda *_, **__: engine)
    rows = [{"id": row.id, "k": 0, "text": f"{CAPTION_TEXT}(view {index})", "num_tokens": 0,
             "finish_reason": "stop"} for index, row in enumerate(run.inputs.rows)]
    run.store.table(CAPTIONS).write(as_arrow(rows, CAPTIONS))
    return run


def _bare_round(engine: VLLMEngine, run: Any, config: EngineConfig, n: int) -> dict[str, float]:
    """The stage's own requests, prepared outside the clock, through one ``LLM.generate``."""
    requests = [Request(run.prompts.reasoning_messages(row.question, f"{CAPTION_TEXT}(view {index})"),
                        key=f"reason:{row.id}:0:{list(range(n))}") for index, row in enumerate(run.inputs.rows)]
    prepared = [engine.prepare(request, SamplingParams.of(config, n)) for request in requests]
    engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    outputs = engine.llm.generate([p for p, _ in prepared], [s for _, s in prepared], use_tqdm=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": sum(len(c.token_ids) for o in outputs for c in o.outputs)}


def _stage_round(engine: VLLMEngine, run: Any) -> dict[str, float]:
    """``reason_stage`` end to end; also how long of it was spent inside ``LLM.generate``."""
    from rollout.stages import TRAJECTORIES, read_rows, reason_stage

    llm, inside = engine.llm, []
    bare_generate = llm.generate

    def timed_generate(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return bare_generate(*args, **kwargs)
        finally:
            inside.append(time.perf_counter() - start)

    llm.reset_prefix_cache()
    llm.generate = timed_generate
    start = time.perf_counter()
    try:
        reason_stage(run)
    finally:
        seconds = time.perf_counter() - start
        del llm.generate  # back to the class method
    return {"seconds": seconds, "outside_generate": seconds - sum(inside),
            "tokens": sum(row["num_tokens"] for row in read_rows(run.store, TRAJECTORIES, ["num_tokens"]))}


def _summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in rounds)
    tokens = rounds[0]["tokens"]
    summary = {"seconds_median": round(seconds, 3), "seconds_each": [round(r["seconds"], 3) for r in rounds],
               "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1)}
    if "outside_generate" in rounds[0]:
        summary["seconds_outside_generate_median"] = round(statistics.median(r["outside_generate"] for r in rounds), 3)
    return summary


def measure_reason_overhead(args: argparse.Namespace) -> dict[str, Any]:
    config = EngineConfig(model=args.model, engine="vllm", temperature=1.0, top_p=0.95, max_tokens=args.max_tokens,
                          seed=0, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                          enforce_eager=args.enforce_eager, dtype=args.dtype)
    engine = VLLMEngine(config, "reasoner.easy", vision=False)
    try:
        with tempfile.TemporaryDirectory(prefix="rollout-bench-") as scratch:
            work = Path(scratch)
            inputs = _write_inputs(work, args.captions)
            shared = _Shared(engine)
            warm = _new_run(work, inputs, config, args, shared, -1)
            _bare_round(engine, warm, config, 1)  # start-up costs (allocator, kernels) out of the clock
            bare, stage = [], []
            for index in range(args.repeats):  # alternate which goes first: the order alone moves timings
                run = _new_run(work, inputs, config, args, shared, index)
                if index % 2:
                    stage.append(_stage_round(engine, run))
                    bare.append(_bare_round(engine, run, config, args.n))
                else:
                    bare.append(_bare_round(engine, run, config, args.n))
                    stage.append(_stage_round(engine, run))
    finally:
        engine.close()
    bare_summary, stage_summary = _summary(bare), _summary(stage)
    return {"bare_generate": bare_summary, "reason_stage": stage_summary,
            "overhead": round(stage_summary["seconds_median"] / bare_summary["seconds_median"] - 1, 4),
            "overhead_outside_generate": round(stage_summary["seconds_outside_generate_median"]
                                               / bare_summary["seconds_median"], 4),
            "overhead_target": 0.10, "same_tokens": bare_summary["tokens"] == stage_summary["tokens"]}


def _timed_stage(run: Any) -> dict[str, float]:
    """``reason_stage`` end to end on a fresh store: seconds and completion tokens written."""
    from rollout.stages import TRAJECTORIES, read_rows, reason_stage

    start = time.perf_counter()
    reason_stage(run)
    seconds = time.perf_counter() - start
    return {"seconds": seconds,
            "tokens": sum(row["num_tokens"] for row in read_rows(run.store, TRAJECTORIES, ["num_tokens"]))}


def measure_served_vs_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """The reason stage through a local vLLM server (engine openai) and through the in-process engine.

    Same model, prompts, sampling and per-request seeds, same vLLM settings on both sides (max_num_seqs,
    max_model_len, dtype, eager, whole-prompt prefill on CPU); the client keeps a whole stage batch in
    flight (concurrency = --batch-size). Rounds alternate which side goes first; both keep their prefix
    cache (warmed on the same prompts), so neither inherits anything the other lacks.
    """
    from dataclasses import replace

    from rollout.local_server import LocalVLLMServer
    from rollout.openai_engine import OpenAIEngine

    config = EngineConfig(model=args.model, engine="vllm", temperature=1.0, top_p=0.95, max_tokens=args.max_tokens,
                          seed=0, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
                          enforce_eager=args.enforce_eager, dtype=args.dtype)
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as scratch:
        work = Path(scratch)
        inputs = _write_inputs(work, args.captions)
        server = LocalVLLMServer(args.model, work / "server.log", max_model_len=args.max_model_len,
                                 max_num_seqs=args.max_num_seqs, dtype=args.dtype, seed=0,
                                 enforce_eager=args.enforce_eager)
        with server:
            served_config = replace(config, engine="openai", base_url=server.base_url, concurrency=args.batch_size)
            served = OpenAIEngine(served_config, "reasoner.easy", vision=False)
            local = VLLMEngine(config, "reasoner.easy", vision=False)
            try:
                sides = {"in_process": (_Shared(local), config), "served": (_Shared(served), served_config)}
                for name, (engine, side_config) in sides.items():  # warm-up: start-up costs out of the clock
                    _timed_stage(_new_run(work, inputs, side_config, args, engine, f"warm-{name}"))
                rounds: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
                for index in range(args.repeats):
                    for name in (sides if index % 2 == 0 else reversed(sides)):
                        engine, side_config = sides[name]
                        rounds[name].append(_timed_stage(_new_run(work, inputs, side_config, args, engine,
                                                                  f"{name}-{index}")))
            finally:
                local.close()
                served.close()
    in_process, served_summary = _summary(rounds["in_process"]), _summary(rounds["served"])
    return {"in_process": in_process, "served": served_summary,
            "served_over_in_process": round(served_summary["tokens_per_s"] / in_process["tokens_per_s"], 4),
            "target": 0.9, "same_tokens": in_process["tokens"] == served_summary["tokens"]}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sophia-profile rollout", description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("vllm", "openai"), default="vllm",
                        help="vllm: the reason stage vs a bare LLM.generate (overhead); openai: the reason stage "
                        "through a local vLLM server vs the in-process engine (served / in-process throughput)")
    parser.add_argument("--model", help="reasoning LLM dir (default: the tiny random reasoner)")
    parser.add_argument("--tiny-dir", default=os.path.join(tempfile.gettempdir(), "sophia-tiny"),
                        help="where the tiny reasoner is built when --model is not given")
    parser.add_argument("--captions", type=int, default=64, help="captions (one question each)")
    parser.add_argument("--n", type=int, default=4, help="trajectories per caption (N)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="captions per stage batch (rollout.batch_size)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on without CUDA")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of each (order alternates)")
    parser.add_argument("--verifier-n", type=int, default=400, help="typical verifications (0: skip)")
    parser.add_argument("--verifier-workers", type=int, default=1)
    return parser.parse_args(argv)


def _device() -> tuple[str, bool]:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), True
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})", False


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device, cuda = _device()
    if args.enforce_eager is None:
        args.enforce_eager = not cuda
    if not cuda:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is the JSON report
    if args.model is None:
        from sophia_tools.tiny import build_reasoner

        args.model = str(build_reasoner(Path(args.tiny_dir) / "reasoner"))
    report: dict[str, Any] = {"device": device, "model": args.model, "captions": args.captions, "n": args.n,
                              "max_tokens": args.max_tokens, "batch_size": args.batch_size,
                              "repeats": args.repeats}
    report["engine"] = args.engine
    report.update(measure_served_vs_in_process(args) if args.engine == "openai" else measure_reason_overhead(args))
    if args.verifier_n > 0:
        from sophia_tools.bench.verifier import run_verifier_bench

        report["verifier"] = run_verifier_bench(n=args.verifier_n, workers=args.verifier_workers)
    print(json.dumps(report, indent=2))
    return 0
