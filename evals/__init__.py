"""Evaluation: run a generator over problems and score them with the training verifiers.

:func:`reasonrl.evals.harness.sample_and_score` is what the trainer calls on its
held-out set and what the pretraining probe uses.
"""
