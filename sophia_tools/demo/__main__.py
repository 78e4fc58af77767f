"""``python -m sophia_tools.demo [--workdir .demo] [--fast] [--captioner-engine E]``: the SOPHIA demo
(see the package docstring).

Each ``stage_*`` function below runs one stage's commands through :class:`sophia_tools.demo.Demo`
and returns the numbers the summary reports; :func:`main` runs them in order.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sophia_common.config import read_recipe
from sophia_tools.demo import FAST, FULL, RECIPE, Demo, DemoError, json_lines, override, read_json

STAGES = ("fixtures", "task", "warmup_captioner", "warmup_reasoner", "convert_policy", "rollout", "pack",
          "train", "verify", "evaluate")
BASE_POLICY = "vllm_policy"  # tiny InternVL3-like (-hf layout): InternViT-300M-like tower, Qwen2 LM, head_dim 64
BASE_POLICY_DTYPE = "float32"  # its weights: fp32 like the CPU trainer and both caption engines
CAPTIONER_ENGINES = ("vllm", "transformers")


def prompt_file(name: str) -> Path:
    """A prompt file named by the recipe's ``rollout.prompts`` (relative to the recipe's directory)."""
    prompts = (read_recipe(RECIPE).get("rollout") or {}).get("prompts") or {}
    return RECIPE.parent / prompts.get(name, f"prompts/{name}.txt")


def metrics(path: Path) -> list[dict[str, Any]]:
    return json_lines(path.read_text(encoding="utf-8")) if path.is_file() else []


def training_numbers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Loss first -> last, tokens and throughput of a ``sophia-train`` metrics file."""
    if not rows:
        raise DemoError("the trainer wrote no metrics")
    seconds, tokens = sum(row["step_seconds"] for row in rows), sum(row["tokens"] for row in rows)
    return {"steps": len(rows), "loss": [row["loss"] for row in rows], "loss_first": rows[0]["loss"],
            "loss_last": rows[-1]["loss"], "tokens": tokens, "step_seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1), "packs_per_step": rows[0]["packs"]}


# ---------------------------------------------------------------- stages


def stage_fixtures(demo: Demo) -> dict[str, Any]:
    out = demo.run("build", [demo.python, "-m", "sophia_tools.tiny", "--out", str(demo.path("tiny")),
                             "--vllm-policy-dtype", BASE_POLICY_DTYPE])
    return {"dir": str(demo.path("tiny")),
            "fixtures": [line.split()[0] for line in out.splitlines() if line.strip()]}


def stage_task(demo: Demo) -> dict[str, Any]:
    from sophia_tools.demo.task import write_task
    from sophia_tools.tiny.tokenizer import DEFAULT_SYSTEM_MESSAGE

    s = demo.settings
    info = write_task(demo.path("task"), images=s.images, warmup_images=s.warmup_images,
                      reasoner_samples=s.reasoner_samples, mix_samples=s.mix_samples,
                      eval_images=s.eval_images, seed=s.seed, vague_share=s.vague_share,
                      detour_share=s.detour_share,
                      caption_prompt=prompt_file("caption").read_text(encoding="utf-8").strip())
    # The system turn the tiny InternVL's chat template adds when it captions (see warmup.py).
    demo.path("task", "captioner_system.txt").write_text(DEFAULT_SYSTEM_MESSAGE + "\n", encoding="utf-8")
    return info


def stage_warmup_captioner(demo: Demo) -> dict[str, Any]:
    from sophia_tools.demo.warmup import captioner_commands

    s, work = demo.settings, demo.path("warmup", "captioner")
    shutil.rmtree(work, ignore_errors=True)
    commands = captioner_commands(demo.python, base_hf=demo.path("tiny", BASE_POLICY), work=work,
                                  system_prompt=demo.path("task", "captioner_system.txt"),
                                  data=demo.path("task", "captioner_sft.jsonl"), steps=s.captioner_steps,
                                  lr=s.captioner_lr, torchrun=demo.torchrun())
    pack: dict[str, Any] = {}
    for step, argv in commands:
        out = demo.run(step, argv, OMP_NUM_THREADS="1") if step == "sft" else demo.run(step, argv)
        if step == "pack":
            pack = json_lines(out)[-1]
    numbers = training_numbers(metrics(work / "metrics.jsonl"))
    return {**numbers, "samples": pack.get("samples_packed"), "packs": pack.get("packs"),
            "efficiency": pack.get("efficiency"), "hf": str(work / "hf")}


def stage_warmup_reasoner(demo: Demo) -> dict[str, Any]:
    s, work = demo.settings, demo.path("warmup", "reasoner")
    work.mkdir(parents=True, exist_ok=True)
    demo.run("finetune", [demo.python, "-m", "sophia_tools.demo.warmup", "reasoner",
                          "--base", str(demo.path("tiny", "reasoner")),
                          "--data", str(demo.path("task", "reasoner_sft.jsonl")),
                          "--prompt", str(prompt_file("simulated_seeing")), "--out", str(work / "hf"),
                          "--stats", str(work / "stats.json"), "--steps", str(s.reasoner_steps),
                          "--seed", str(s.seed)])
    return {**read_json(work / "stats.json"), "hf": str(work / "hf")}


def stage_convert_policy(demo: Demo) -> dict[str, Any]:
    out = demo.run("hf-to-mcore", [demo.python, "-m", "sophia_tools.convert_cli", "hf-to-mcore", "--hf-dir",
                                   str(demo.path("warmup", "captioner", "hf")), "--out-dir",
                                   str(demo.path("policy_mcore")), "--tp", "2", "--force"])
    return {**json_lines(out)[-1], "dir": str(demo.path("policy_mcore"))}


def rollout_overrides(demo: Demo) -> list[str]:
    """The recipe overrides of every ``sophia-rollout`` command of the demo (and of the ablations).

    The captioner runs on the engine the settings name; the recipe's ``rollout.captioner`` section
    holds the vLLM CPU options (eager mode, ``max_model_len``, fp32) the ``vllm`` engine uses.
    """
    s = demo.settings
    if s.captioner_engine not in CAPTIONER_ENGINES:
        raise DemoError(f"captioner engine {s.captioner_engine!r}: use one of {', '.join(CAPTIONER_ENGINES)}")
    return [override("rollout.captioner.engine", s.captioner_engine),override("rollout.inputs", [str(demo.path("task", "rollout_inputs.jsonl"))]),
            override("rollout.store_dir", demo.path("store")),
            override("rollout.selected_out", demo.path("store", "selected.jsonl")),
            override("rollout.captioner.model", demo.path("warmup", "captioner", "hf")),
            override("rollout.reasoner.easy.model", demo.path("warmup", "reasoner", "hf")),
            f"rollout.captioner.K={s.K}", f"rollout.N={s.N}",
            f"rollout.captioner.max_tokens={s.caption_max_tokens}",
            f"rollout.reasoner.easy.max_tokens={s.reasoner_max_tokens}"]


def stage_rollout(demo: Demo) -> dict[str, Any]:
    from rollout.store import Store
    from sophia_tools.demo.signals import rollout_signals
    from sophia_tools.demo.summary import analyse_store

    rollout = [demo.python, "-m", "sophia_tools.rollout_cli"]
    reports = json_lines(demo.run("run", [*rollout, "run", "--config", str(RECIPE), *rollout_overrides(demo)],
                                  VLLM_CPU_KVCACHE_SPACE="1"))
    demo.run("stats", [*rollout, "stats", "--config", str(RECIPE), *rollout_overrides(demo), "--out",
                       str(demo.path("rollout_stats"))])
    stats = read_json(demo.path("rollout_stats", "stats.json"))
    analysis = analyse_store(demo.path("store"), demo.path("task", "rollout_inputs.jsonl"),
                             alpha=stats["selection"]["alpha"])
    analysis["signals"] = rollout_signals(demo.path("store"), demo.path("task", "rollout_inputs.jsonl"),
                                          alpha=stats["selection"]["alpha"])
    # The engine that wrote the captions, as the store recorded it (the caption table's provenance).
    engine = (Store(demo.path("store")).table("captions").provenance or {}).get("captioner", {}).get("engine")
    return {"reports": {report["stage"]: report for report in reports}, "stats": stats, "analysis": analysis,
            "captioner_engine": engine}


def stage_pack(demo: Demo) -> dict[str, Any]:
    task = demo.path("task")
    sources = [{"path": str(demo.path("store", "selected.jsonl")), "kind": "trajectories", "weight": 1.0},
               {"path": str(task / "mix_text.jsonl"), "kind": "text", "weight": 1.0},
               {"path": str(task / "mix_vqa.jsonl"), "kind": "vqa", "weight": 1.0}]
    out = demo.run("pack", [demo.python, "-m", "sophia_tools.rollout_cli", "pack", "--config", str(RECIPE),
                            override("pack.out", demo.path("packed")),
                            override("pack.tokenizer_dir", demo.path("policy_mcore", "hf_files")),
                            override("pack.rollout_store", demo.path("store")),
                            override("pack.sources", sources), "--force"])
    manifest = read_json(demo.path("packed", "manifest.json"))
    return {**json_lines(out)[-1], "sources": manifest["stats"]["sources"]}


def stage_train(demo: Demo) -> dict[str, Any]:
    work = demo.path("sophia")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    demo.run("sophia-train", [*demo.torchrun(), "-m", "sophia_tools.train_cli", "--config", str(RECIPE),
                              override("model.mcore_dir", demo.path("policy_mcore")),
                              override("data.path", demo.path("packed")), "train.mode=sophia",
                              f"train.steps={demo.settings.sophia_steps}",
                              override("checkpoint.save_dir", work / "checkpoints"),
                              "checkpoint.resume=false",
                              override("logging.metrics_file", work / "metrics.jsonl"),
                              override("logging.tensorboard_dir", work / "tensorboard"),
                              "--export-hf", str(work / "hf")], OMP_NUM_THREADS="1")
    return {**training_numbers(metrics(work / "metrics.jsonl")), "hf": str(work / "hf")}


def stage_verify(demo: Demo) -> dict[str, Any]:
    from sophia_tools.demo.summary import compare_checkpoints

    exported, mcore = demo.path("sophia", "hf"), demo.path("verify", "mcore")
    demo.run("hf-to-mcore", [demo.python, "-m", "sophia_tools.convert_cli", "hf-to-mcore", "--hf-dir", str(exported),
                             "--out-dir", str(mcore), "--tp", "2", "--force"])
    out = demo.run("verify", [*demo.torchrun(), "-m", "sophia_tools.convert_cli", "verify", "--hf-dir", str(exported),
                              "--mcore-dir", str(mcore), "--tp", "2", "--tol", "1e-4"], OMP_NUM_THREADS="1")
    found = re.findall(r"max_abs_diff=([0-9.eE+-]+)", out)
    if not found:
        raise DemoError(f"stage 'verify': sophia-convert verify printed no max_abs_diff:\n{out[-2000:]}")
    tensors = compare_checkpoints(demo.path("warmup", "captioner", "hf"), exported)
    return {"max_abs_diff": float(found[-1]), "tolerance": 1e-4, "tp": 2, "tensors": tensors}


def heldout_command(demo: Demo, model: Path, out: Path, seed: int) -> list[str]:
    """``sophia_tools.demo.heldout``: ``model`` answers the held-out questions (the recipe's ``eval:``
    protocol with the demo's token limit and sampling), scored by the verifier, into ``out``."""
    s = demo.settings
    return [demo.python, "-m", "sophia_tools.demo.heldout", "--model", str(model), "--questions",
            str(demo.path("task", "eval_inputs.jsonl")), "--out", str(out), "--seed", str(seed),
            f"eval.policy.max_tokens={s.answer_max_tokens}", f"eval.policy.temperature={s.eval_temperature}",
            f"eval.policy.top_p={s.eval_top_p}", "eval.batch_size=64"]


def stage_evaluate(demo: Demo) -> dict[str, Any]:
    """The policy answers held-out questions itself, before and after the update; the verifier scores."""
    models = {"before": demo.path("warmup", "captioner", "hf"), "after": demo.path("sophia", "hf")}
    results: dict[str, Any] = {
        when: json_lines(demo.run(when, heldout_command(demo, model, demo.path("evaluate", when),
                                                         demo.settings.seed)))[-1]
        for when, model in models.items()}
    # The user's command for the same question: per-benchmark delta with a paired bootstrap interval.
    out = demo.path("evaluate", "compare")
    demo.run("compare", [demo.python, "-m", "sophia_tools.eval_cli", "compare", str(demo.path("evaluate", "before")),
                         str(demo.path("evaluate", "after")), "--out", str(out)])
    results["compare"] = read_json(out / "compare.json")["benchmarks"]
    return results


STAGE_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in STAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo"),
                        help="where everything goes (default .demo)")
    parser.add_argument("--fast", action="store_true",
                        help="tiny sizes: the whole loop in a few minutes (tests)")
    parser.add_argument("--captioner-engine", choices=CAPTIONER_ENGINES, default="vllm",
                        help="engine of the rollout's captioner: vllm (default; real vLLM on CPU) or "
                             "transformers (the fallback where vLLM cannot run)")
    args = parser.parse_args(argv)
    from sophia_tools.demo.summary import write_summary

    started = time.perf_counter()
    demo = Demo(args.workdir, replace(FAST if args.fast else FULL, captioner_engine=args.captioner_engine))
    try:
        demo.check_settings()
        for name in STAGES:
            demo.stage(name, lambda name=name: STAGE_FUNCTIONS[name](demo))
    except DemoError as exc:
        print(f"\n[demo] FAILED: {exc}", file=sys.stderr)
        return 1
    summary = write_summary(demo, wall_seconds=time.perf_counter() - started)
    print(summary["table"])
    failed = [check["check"] for check in summary["checks"] if not check["ok"]]
    if failed and not args.fast:
        print(f"\n[demo] FAILED checks of a full-size run: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
