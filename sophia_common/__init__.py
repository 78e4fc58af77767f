"""Light code shared by the three packages: the on-disk contract, recipes, logging.

Nothing here imports torch, Megatron, vLLM or Transformer Engine at import time, so
both the rollout environment (vLLM) and the training environment (Megatron) can use it.
"""

__version__ = "0.1.0"
