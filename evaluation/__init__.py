"""sophia-eval: the paper's evaluation protocol (App. C) on the benchmarks' published files, for any checkpoint.

* ``config`` — the ``eval:`` recipe section (protocol defaults: zero-shot, slow-thinking system
  prompt, temperature 1.0, top-p 0.8, 16,384 tokens, response hints, K samples);
* ``formats`` / ``readers`` — one declarative row per benchmark format, read into ``Question``s;
* ``requests`` — messages, the (composite) image and the content key of each response;
* ``scoring`` — rule or LLM extraction, rule verifier or LLM judge;
* ``metrics`` / ``report`` — pass@1 ± s.e., pass@K, per category; results and ``compare`` files;
* ``run`` — ``evaluate(config, model, benchmarks, out_dir)``, resumable; ``cli`` — the commands.

Importing the package is light; torch, vLLM and matplotlib load only where used.
"""
