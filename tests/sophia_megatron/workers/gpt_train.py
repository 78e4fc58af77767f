"""Worker: train a tiny GPTModel on fixed data for a few steps and write per-step losses.

Launched by the multi-rank tests under ``torchrun``. With ``--save-init FILE`` (TP=1, PP=1)
it writes the initial full state dict; with ``--load-init FILE`` it shards that state dict
into this rank's TP/PP piece first, so every layout starts from the same weights.
"""

from __future__ import annotations

import argparse
import json
import os


def build_model(pstate, args):
    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=4, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=96,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization="RMSNorm",
        add_bias_linear=False, add_qkv_bias=True, hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=pstate.tp, pipeline_model_parallel_size=pstate.pp,
        pipeline_dtype=torch.float32, params_dtype=torch.float32, use_cpu_initialization=True,
        init_method_std=0.05, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, apply_rope_fusion=False, persist_layer_norm=False,
        gradient_accumulation_fusion=False,
    )
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=args.vocab, max_sequence_length=args.seq, pre_process=pstate.is_first_stage,
        post_process=pstate.is_last_stage, share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
    )
    return model, config


def batches(args):
    import torch

    gen = torch.Generator().manual_seed(1234)
    # A learnable pattern: each sequence is an arithmetic progression mod vocab.
    data = []
    for _ in range(args.steps * args.global_batch):
        start, step = torch.randint(0, args.vocab, (2,), generator=gen).tolist()
        data.append(torch.tensor([(start + i * (step % 7 + 1)) % args.vocab for i in range(args.seq + 1)]))
    return torch.stack(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--save-init")
    parser.add_argument("--load-init")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from megatron.core import parallel_state as mpu

    from conversion.megatron_layout import shard_state_dict
    from sophia_megatron import engine
    from sophia_megatron.parallel import destroy_parallel, init_parallel

    pstate = init_parallel(tp=args.tp, pp=args.pp, seed=42)
    model, config = build_model(pstate, args)
    if args.save_init:
        torch.save(model.state_dict(), args.save_init)
    if args.load_init:
        full = torch.load(args.load_init)
        local = shard_state_dict(full, tp_rank=pstate.tp_rank, tp=pstate.tp, pp_rank=pstate.pp_rank,
                                 pp=pstate.pp, num_layers=config.num_layers, gated_mlp=True)
        model.load_state_dict(local, strict=True)
    ddp, optimizer = engine.build_training(model, config, engine.OptimizerSettings(lr=3e-3, weight_decay=0.01,
                                                                                  clip_grad=1.0, min_lr=3e-3))

    data = batches(args)
    dp_batch = args.global_batch // pstate.dp
    num_micro = dp_batch // args.micro_batch
    positions = torch.arange(args.seq).unsqueeze(0).expand(args.micro_batch, -1)

    def forward_step(data_iterator, model):
        tokens = next(data_iterator)
        inputs, labels = tokens[:, :-1], tokens[:, 1:]
        output = model(inputs, positions, None, labels=labels)

        def loss_func(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach().clone()}  # the schedule scales `loss` in place

        return output, loss_func

    step_losses = []
    for step in range(args.steps):
        batch = data[step * args.global_batch:(step + 1) * args.global_batch]
        mine = batch[pstate.dp_rank * dp_batch:(pstate.dp_rank + 1) * dp_batch]
        iterator = iter(mine.split(args.micro_batch))
        optimizer.zero_grad()
        reports = engine.forward_backward(forward_step, iterator, [ddp], num_microbatches=num_micro,
                                          seq_length=args.seq, micro_batch_size=args.micro_batch)
        engine.optimizer_step(optimizer)
        if pstate.is_last_stage:
            loss = torch.stack([d["loss"] for d in reports]).mean()
            torch.distributed.all_reduce(loss, group=mpu.get_data_parallel_group())
            step_losses.append(float(loss) / pstate.dp)
    if pstate.is_last_stage and pstate.tp_rank == 0 and pstate.dp_rank == 0:
        with open(args.out, "w") as f:
            json.dump({"losses": step_losses, "world": pstate.world_size}, f)
    destroy_parallel()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
