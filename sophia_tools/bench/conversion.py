"""``sophia-profile conversion``: streamed conversion speed and memory on 38B-shaped tensors.

Synthesises a transformers-native InternVL checkpoint with InternVL3-38B tensor shapes at
reduced depth (the full 151,674 x 5,120 embedding and LM head, InternViT-6B layers,
Qwen2.5-32B layers), converts it to TP=8 PP=2 in a child process (so its peak RSS is its
own), and copies the same shards with a plain file copy in the same run as the baseline (copies
and conversions alternate, ``--rounds`` conversions between ``--rounds + 1`` copies; medians are
compared). Both sides start with the source evicted from the page cache
and are timed until their output is flushed to disk (``fsync``). Peak memory is the child's own
peak RSS (``VmHWM``).
``--depths 2,4`` runs two depths to show that peak memory does not grow with the model.
``--preset small`` uses narrow tensors so CI can run the whole path in seconds.

    sophia-profile conversion [--preset 38b|small] [--depths 2,4] [--tp 8] [--pp 2] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PRESETS = {
    # InternViT-6B tower + Qwen2.5-32B language model (InternVL3-38B), bf16 on disk.
    "38b": {"vision": dict(hidden_size=3200, num_attention_heads=25, intermediate_size=12800, patch_size=14,
                           image_size=448, norm_type="rms_norm", use_qk_norm=True, attention_bias=False),
            "text": dict(hidden_size=5120, num_attention_heads=40, num_key_value_heads=8,
                         intermediate_size=27648, vocab_size=151674), "dtype": "bfloat16"},
    "small": {"vision": dict(hidden_size=128, num_attention_heads=4, intermediate_size=512, patch_size=14,
                             image_size=448, norm_type="rms_norm", use_qk_norm=True, attention_bias=False),
              "text": dict(hidden_size=256, num_attention_heads=16, num_key_value_heads=8,
                           intermediate_size=512, vocab_size=8000), "dtype": "bfloat16"},
}


def synth_config(preset: dict[str, Any], lm_layers: int, vit_layers: int) -> dict[str, Any]:
    vision = dict(preset["vision"], num_hidden_layers=vit_layers, layer_norm_eps=1e-6, hidden_act="gelu",
                  model_type="internvl_vision")
    text = dict(preset["text"], num_hidden_layers=lm_layers, model_type="qwen2", rope_theta=1e6,
                rms_norm_eps=1e-6, max_position_embeddings=32768, tie_word_embeddings=False)
    return {"model_type": "internvl", "architectures": ["InternVLForConditionalGeneration"],
            "vision_config": vision, "text_config": text, "image_token_id": text["vocab_size"] - 7,
            "downsample_ratio": 0.5, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default", "tie_word_embeddings": False}


def synthesise(directory: Path, config: dict[str, Any], dtype: str) -> int:
    """Write the checkpoint one layer per shard (bounded memory); returns bytes of tensor data."""
    import torch
    from safetensors.torch import save_file

    from conversion.arch import arch_from_hf_config
    from conversion.internvl_mapping import expected_hf_shapes

    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    groups: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in expected_hf_shapes(arch_from_hf_config(config)).items():
        parts = name.split(".")
        key = ".".join(parts[:5]) if ".layer." in name or ".layers." in name else parts[0] + "." + parts[-2]
        groups.setdefault(key, {})[name] = shape
    weight_map, total = {}, 0
    for i, (_, shapes) in enumerate(groups.items(), start=1):
        filename = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: torch.empty(s, dtype=getattr(torch, dtype)).uniform_(-0.02, 0.02) for n, s in shapes.items()}
        save_file(tensors, str(directory / filename), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return total


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` to disk, so the timing includes writing it, not just caching it."""
    import os

    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict(directory: Path) -> None:
    """Drop ``directory``'s files from the page cache, so every timed step reads its source from disk."""
    import os

    os.sync()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_copy(source: Path, dest: Path) -> float:
    """Seconds to copy the shards and flush the copies (the same durability the conversion is timed with)."""

    evict(source)  # a cold source, and no dirty pages of earlier steps pending
    dest.mkdir()
    start = time.perf_counter()
    for shard in sorted(source.glob("*.safetensors")):
        shutil.copyfile(shard, dest / shard.name)
    fsync_tree(dest)
    return time.perf_counter() - start


def peak_rss() -> int:
    """This process's own peak RSS in bytes.

    ``VmHWM`` (Linux) belongs to the process's memory map, which ``exec`` replaces; ``ru_maxrss``
    would also report the parent's peak at the time of the fork (kept across ``exec``), which here
    is the synthesiser's, not the converter's.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def convert_in_child(source: Path, out: Path, tp: int, pp: int) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of ``hf_to_mcore`` run in its own process, its output flushed to disk."""
    code = ("import time; from pathlib import Path; from conversion.convert import hf_to_mcore; "
            "from sophia_tools.bench.conversion import evict, fsync_tree, peak_rss; "
            f"evict(Path({str(source)!r})); t=time.perf_counter(); "
            f"hf_to_mcore({str(source)!r}, {str(out)!r}, tp={tp}, pp={pp}); fsync_tree(Path({str(out)!r})); "
            "print(time.perf_counter()-t, peak_rss())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "SOPHIA_LOG_LEVEL": "WARNING"})
    seconds, rss = proc.stdout.split()
    return float(seconds), int(rss)


def run_depth(workdir: Path, preset: dict[str, Any], depth: int, tp: int, pp: int, rounds: int) -> dict[str, Any]:
    source = workdir / f"hf_{depth}"
    config = synth_config(preset, lm_layers=depth, vit_layers=max(1, depth // 2))
    data_bytes = synthesise(source, config, preset["dtype"])
    # Copies and conversions alternate (copy, convert, copy, ..., copy) and each side is its median,
    # so neither is favoured by the page cache, by the other's writes still being flushed, or by a
    # burst of other work on a shared machine during one of the measurements.
    copies, converts, rss = [], [], 0
    for index in range(rounds):
        copies.append(plain_copy(source, workdir / f"copy_{depth}"))
        shutil.rmtree(workdir / f"copy_{depth}")
        if index:
            shutil.rmtree(workdir / f"mcore_{depth}")
        seconds, peak = convert_in_child(source, workdir / f"mcore_{depth}", tp, pp)
        converts.append(seconds)
        rss = max(rss, peak)
    copies.append(plain_copy(source, workdir / f"copy_{depth}"))
    seconds, copy_seconds = statistics.median(converts), statistics.median(copies)
    written = sum(f.stat().st_size for f in (workdir / f"mcore_{depth}").rglob("*.pt"))
    largest = max(f.stat().st_size for f in source.glob("*.safetensors"))
    for path in (source, workdir / f"copy_{depth}", workdir / f"mcore_{depth}"):
        shutil.rmtree(path)
    return {"lm_layers": depth, "vit_layers": max(1, depth // 2), "bytes": data_bytes, "bytes_written": written,
            "seconds": round(seconds, 3), "seconds_each": [round(s, 3) for s in converts],
            "gb_per_s": round(data_bytes / seconds / 1e9, 3), "copy_seconds": round(copy_seconds, 3),
            "copy_seconds_each": [round(s, 3) for s in copies], "copy_gb_per_s": round(data_bytes / copy_seconds / 1e9, 3),
            "ratio_vs_copy": round(copy_seconds / seconds, 3), "peak_rss_bytes": rss,
            "largest_shard_bytes": largest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sophia-profile conversion", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="38b")
    parser.add_argument("--depths", default="2,4", help="comma-separated LM depths (multiples of PP)")
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="scratch space (default: a temporary dir)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="conversions per depth, alternating with rounds + 1 copies; medians are compared")
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",")]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        runs = [run_depth(Path(tmp), PRESETS[args.preset], d, args.tp, args.pp, args.rounds) for d in depths]
    result = {"benchmark": "conversion", "preset": args.preset, "tp": args.tp, "pp": args.pp, "runs": runs,
              "parent_peak_rss_bytes": peak_rss()}
    if len(runs) > 1:
        result["rss_growth_when_depth_doubles"] = round(runs[-1]["peak_rss_bytes"] / runs[0]["peak_rss_bytes"] - 1, 4)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
