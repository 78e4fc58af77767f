"""The top layer: everything that spans more than one library package.

Console-script command tables (``sophia-train``, ``sophia-convert``, ``sophia-rollout``,
``sophia-profile``), the profiling benchmarks (``bench/``), the tiny offline fixtures
(``tiny/``) and the end-to-end demo (``demo/``). Library packages (``sophia_common``,
``conversion``, ``sophia_megatron``, ``rollout``) never import this package.
"""
