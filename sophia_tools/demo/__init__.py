"""``make demo``: the whole SOPHIA loop end to end on CPU, with tiny models and a synthetic image task.

    python -m sophia_tools.demo [--workdir .demo] [--fast] [--captioner-engine vllm|transformers]

What it does, stage by stage (each one a real command of the three packages, run as a subprocess
so that rollout, training and conversion each run as they would in their own environment):

1. ``fixtures`` — the tiny offline models and tokenizers (``python -m sophia_tools.tiny``); the
   policy is ``vllm_policy``, a tiny InternVL3-like model (InternViT-300M-like tower, Qwen2 language
   model with head_dim 64, the smallest vLLM's CPU attention accepts) in the ``-hf`` layout;
2. ``task`` — coloured-circle images with colour / count questions and gold answers
   (:mod:`sophia_tools.demo.task`);
3. ``warmup_captioner`` — the policy InternVL learns to describe such images: ``sophia-convert
   hf-to-mcore`` (TP=2), ``sophia-rollout pack`` (VQA), ``sophia-train train.mode=sft`` on two
   ranks, exported to HF (:mod:`sophia_tools.demo.warmup`);
4. ``warmup_reasoner`` — the tiny reasoning LLM learns to answer from a description (plain PyTorch);
5. ``convert_policy`` — the warmed-up policy to Megatron TP=2, where the update starts from;
6. ``rollout`` — ``sophia-rollout run``: K captions per image by the policy on real vLLM (CPU,
   images through vLLM's InternVL processor; ``--captioner-engine transformers`` is the fallback
   where vLLM cannot run), N trajectories per caption by the reasoner on real vLLM (CPU), verifier
   scores, caption rewards, Keep-1 selection; then ``sophia-rollout stats``;
7. ``pack`` — the selected trajectories plus a few text-only and VQA samples;
8. ``train`` — the SOPHIA update on two ranks (Megatron-Core, TP=2), exported to HF;
9. ``verify`` — the export converted back to Megatron TP=2 and compared with transformers
   (``sophia-convert verify``), and its tensors checked (language model moved, vision frozen);
10. ``evaluate`` — the policy answers held-out image questions itself, before and after the update
    (greedy, slow-thinking system prompt), with ``sophia-eval``'s evaluation on the generic ``jsonl``
    benchmark format, scored by the project's verifier (:mod:`sophia_tools.demo.heldout`);
11. summary — ``summary.txt`` / ``summary.json`` plus ``loss.png`` and ``lengths.png`` (always rewritten
    from the stages' recorded numbers, :mod:`sophia_tools.demo.summary`).

Resumable: a stage that finished wrote ``WORKDIR/done/STAGE.json`` (its numbers) and is skipped
on the next run; an interrupted rollout resumes from its store. A failing command stops the demo
with the stage's name and the tail of ``WORKDIR/logs/STAGE.log``. ``--fast`` shrinks every size
(the test runs it); a workdir remembers its settings and refuses to mix them.

This package is light at import (no torch, Megatron or vLLM); only the subprocesses load them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from rollout.local_server import free_port

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs" / "tiny.yaml"
PROMPTS = REPO / "configs" / "prompts"
TAIL_LINES = 40


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run; the rest comes from ``configs/tiny.yaml``."""

    images: int = 24  # rollout questions, one per image (alternating colour / count)
    warmup_images: int = 160  # other images, for the captioner's SFT warm-up
    captioner_steps: int = 150  # SFT steps of the captioner warm-up (2 packs, ~4 samples per step)
    captioner_lr: float = 1e-3  # its peak learning rate; at 4e-3 the captions ignored the image (docs/ABLATIONS.md)
    reasoner_samples: int = 2000  # text warm-up records of the reasoner
    reasoner_steps: int = 200  # fine-tune steps of the reasoner (batch 8)
    K: int = 4  # captions per image
    N: int = 4  # trajectories per caption
    mix_samples: int = 8  # text-only and VQA samples each, mixed into the SOPHIA update
    sophia_steps: int = 60  # steps of the SOPHIA update (tiny.yaml: 12; more so the policy visibly learns)
    eval_images: int = 24  # held-out questions the policy answers itself, before and after the update
    answer_max_tokens: int = 96  # tokens per answer in that evaluation
    caption_max_tokens: int = 48  # tokens per caption
    reasoner_max_tokens: int = 96  # tokens per trajectory
    vague_share: float = 0.3  # warm-up descriptions that leave the count or the colour out (task.py)
    detour_share: float = 0.4  # reasoner warm-up trajectories with a detour (half of them end wrong)
    eval_temperature: float = 0.0  # the held-out evaluation: 0 greedy, else sampled (paper: 1.0)
    eval_top_p: float = 1.0  # its nucleus mass when sampling (paper: 0.8)
    seed: int = 0  # seed of the task and the warm-ups
    captioner_engine: str = "vllm"  # the rollout's captioner: vllm (CPU) or transformers (fallback)


FULL = DemoSettings()
FAST = DemoSettings(images=4, warmup_images=8, captioner_steps=4, reasoner_samples=64, reasoner_steps=8,
                    K=2, N=2, mix_samples=2, sophia_steps=3, eval_images=2, answer_max_tokens=32,
                    caption_max_tokens=24, reasoner_max_tokens=48)


def _settings_name(settings: dict[str, Any]) -> str:
    """"the full", "the --fast" or "other", plus the captioner engine: how a workdir's settings read."""
    sizes = {key: value for key, value in settings.items() if key != "captioner_engine"}
    known = {str(asdict(replace(preset, captioner_engine=""))): name
             for preset, name in ((FULL, "the full"), (FAST, "the --fast"))}
    name = known.get(str({**sizes, "captioner_engine": ""}), "other")
    return f"{name} ({settings.get('captioner_engine', 'transformers')} captioner)"


class DemoError(RuntimeError):
    """A stage failed; the message names it and carries the tail of its log."""


def override(key: str, value: Any) -> str:
    """A ``key=value`` recipe override whose value survives YAML parsing as is (JSON is YAML)."""
    return f"{key}={json.dumps(value if not isinstance(value, Path) else str(value))}"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a marker is never half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


class Demo:
    """Runs stages in a workdir: done-markers, per-stage logs, subprocesses with the repo on the path."""

    def __init__(self, workdir: Path, settings: DemoSettings, echo: Callable[[str], None] = print,
                 label: str = "demo"):
        self.workdir = workdir.resolve()
        self.label = label
        self.settings = settings
        self.echo = echo
        self.python = sys.executable
        self.results: dict[str, dict[str, Any]] = {}
        self.current = ""
        self.cpu_seconds = 0.0  # CPU seconds of the commands run so far (children_cpu_seconds)

    def path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)

    def check_settings(self) -> None:
        """Record the settings in a fresh workdir; refuse a workdir made with other settings."""
        record, wanted = self.path("demo_settings.json"), asdict(self.settings)
        if record.is_file() and read_json(record) != wanted:
            made, asked = _settings_name(read_json(record)), _settings_name(wanted)
            raise DemoError(f"{self.workdir} was made with {made} settings, this run asks for {asked} ones; "
                            "use another --workdir (or remove it)")
        write_json(record, wanted)

    def stage(self, name: str, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``body`` (returns the stage's numbers) unless ``done/NAME.json`` exists; record the result."""
        marker = self.path("done", f"{name}.json")
        if marker.is_file():
            result = {**read_json(marker), "reused": True}
            self.echo(f"[{self.label}] {name:<17} reused ({result['seconds']:.1f} s when it ran)")
        else:
            self.current = name
            self.echo(f"[{self.label}] {name:<17} running ... (log: {self.path('logs', name + '.log')})")
            started, cpu = time.perf_counter(), self.cpu_seconds
            try:
                stats = body()
            except Exception as exc:  # name the stage whatever broke in it
                if isinstance(exc, DemoError) and f"stage '{name}'" in str(exc):
                    raise
                raise DemoError(f"stage '{name}' failed: {type(exc).__name__}: {exc}\n"
                                f"(log: {self.path('logs', name + '.log')})") from exc
            result = {"stage": name, "seconds": round(time.perf_counter() - started, 2),
                      "cpu_seconds": round(self.cpu_seconds - cpu, 1), "stats": stats}
            write_json(marker, result)
            result = {**result, "reused": False}
            self.echo(f"[{self.label}] {name:<17} done in {result['seconds']:.1f} s "
                      f"({result['cpu_seconds']:.0f} CPU s)")
        self.results[name] = result
        return result["stats"]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update(PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", **extra)
        return env

    def run(self, step: str, argv: list[str], **env: str) -> str:
        """Run one command of the current stage (output appended to its log); returns its stdout."""
        log = self.path("logs", f"{self.current}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"\n==== {self.current}/{step}: {' '.join(argv)}\n")
            handle.flush()
            started, cpu = time.perf_counter(), children_cpu_seconds()
            proc = subprocess.run(argv, cwd=REPO, env=self.env(**env), stdout=subprocess.PIPE,
                                  stderr=handle, text=True)
            cpu = children_cpu_seconds() - cpu
            self.cpu_seconds += cpu
            handle.write(proc.stdout)
            handle.write(f"==== exit {proc.returncode} after {time.perf_counter() - started:.1f} s "
                         f"({cpu:.1f} CPU s)\n")
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-TAIL_LINES:])
            raise DemoError(f"stage '{self.current}' failed: {step} exited with {proc.returncode}\n"
                            f"command: {' '.join(argv)}\n--- last {TAIL_LINES} lines of {log} ---\n{tail}")
        return proc.stdout

    def torchrun(self, nproc: int = 2) -> list[str]:
        return [self.python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
                "--master-addr=127.0.0.1", f"--master-port={free_port()}"]


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished child processes (and their waited-for
    descendants) so far: what a stage costs whatever else shares the machine."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects printed one per line by a CLI (other lines ignored)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
