"""The rollout side of SOPHIA: captioning, off-policy reasoning, verification, selection, packing.

Runs in a vLLM environment: never imports Megatron-Core or Transformer Engine. Importing
the package is light; engines are imported where they are used.
"""
