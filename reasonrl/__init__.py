"""reasonrl: reinforcement learning from verifiable rewards for reasoning models.

Entry points: ``reasonrl-train`` (GRPO, :mod:`reasonrl.train`) and
``reasonrl-sft`` (:mod:`reasonrl.sft`). Everything else is a library module
that takes plain arguments. Importing this package is cheap: torch,
transformers and the heavy optional engines load inside the modules that use
them.
"""

__version__ = "0.1.0"
