"""Evaluation: run a generator over problems and score them with the training verifiers.

:func:`reasonrl.evals.harness.sample_and_score` is the generate-and-score loop:
the trainer's periodic evaluation (:func:`~reasonrl.evals.harness.training_eval`,
on its held-out set and benchmark subsets) and the tiny base model's
pretraining probe use it. :mod:`reasonrl.evals.loaders` reads the built-in
benchmarks and :mod:`reasonrl.evals.estimators` computes pass@k and maj@k;
the ``reasonrl-eval`` entry point is :mod:`reasonrl.benchmark`.
"""
