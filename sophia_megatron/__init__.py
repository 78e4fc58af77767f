"""The Megatron side of SOPHIA: InternVL in Megatron-Core, the off-policy trainer, data loading.

Importing this package is light: Megatron-Core, torch.distributed and Transformer Engine
are imported by the submodules that use them, never here. It never imports vLLM.
"""
