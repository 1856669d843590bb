"""reasonrl: reinforcement learning from verifiable rewards for reasoning models.

Entry points (console scripts): ``reasonrl-train`` (GRPO, :mod:`reasonrl.train`),
``reasonrl-sft`` (:mod:`reasonrl.finetune`), ``reasonrl-eval``
(:mod:`reasonrl.benchmark`) and ``reasonrl-export`` (:mod:`reasonrl.export`).
Everything else is a library module that takes plain arguments. The verifiers,
the sandbox and the evaluation code are ``reasonrl.verifiers``,
``reasonrl.sandbox`` and ``reasonrl.evals`` (top-level folders in the source
tree, never top-level names). The design is in ``docs/design.md``. Importing this package is cheap: torch,
transformers and the heavy optional engines load inside the modules that use
them.
"""

__version__ = "0.1.0"
