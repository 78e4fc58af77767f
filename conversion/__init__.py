"""InternVL checkpoints <-> Megatron-Core tensor/pipeline-parallel layout, streamed and bit-exact.

Importing this package is light (no Megatron or torch at import). It never imports vLLM.
"""
