"""On-policy GRPO continuation of the SOPHIA checkpoint (``sophia-train train.mode=grpo``).

The orchestrator lives in the top layer because it joins both sides: generation, verification and
rewards from ``rollout``, the update and the weight export from ``sophia_megatron``.
``config`` holds the ``grpo:`` recipe section, ``generator`` the logprob-reporting generator,
``loop`` the per-step loop. See docs/GRPO.md.
"""
