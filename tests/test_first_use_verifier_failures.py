"""A verifier that fails on most samples is loud: a warning with its first exception, then an error naming it.

Scoring turns a raising verifier into ``error`` verdicts, which are masked out of the loss; without this
check a plugin that raises on every call trains on nothing, with loss 0 and exit status 0.
"""

from __future__ import annotations

import logging

import pytest

from reasonrl.verifiers import Verdict
from reasonrl.verifiers.scoring import VerifierFailure, check_failures, score


class Broken:
    name = "broken"

    def __call__(self, problem, completion):
        raise RuntimeError(f"cannot read {problem['answer']!r}")


class Flaky:
    name = "flaky"

    def __call__(self, problem, completion):
        if completion == "boom":
            raise ValueError("flaky")
        return Verdict(1.0, "correct", {})


def test_a_verifier_raising_on_every_call_stops_with_its_first_exception(caplog):
    problems = [{"answer": str(i)} for i in range(8)]
    scored = score(problems, ["x"] * 8, {"broken": (Broken(), 1.0), "flaky": (Flaky(), 1.0)})
    assert all(scored.masked)  # what the trainer would otherwise do quietly
    with caplog.at_level(logging.WARNING), pytest.raises(VerifierFailure) as e:
        check_failures(scored.verdicts, max_failed_frac=0.5, step=3)
    msg = str(e.value)
    assert "'broken'" in msg and "8 of 8 samples at step 3" in msg and "RuntimeError: cannot read '0'" in msg
    assert "verify.max_failed_frac=0.5" in msg
    assert "cannot read '0'" in caplog.text  # the warning carries the first exception


def test_a_few_failures_warn_once_and_the_run_goes_on(caplog):
    scored = score([{"answer": "1"}] * 10, ["boom"] + ["ok"] * 9, {"flaky": (Flaky(), 1.0)})
    with caplog.at_level(logging.WARNING):
        fracs = check_failures(scored.verdicts, max_failed_frac=0.5, step=1)
        check_failures(scored.verdicts, max_failed_frac=0.5, step=2)
    assert fracs == {"flaky": 0.1}
    assert caplog.text.count("ValueError: flaky") == 1  # once per verifier, not every step
    # 1.0 never stops; timeouts count as failures too
    rows = [{"v": Verdict(0.0, "timeout", {"timeout_s": 10})} for _ in range(4)]
    assert check_failures(rows, max_failed_frac=1.0) == {"v": 1.0}
    with pytest.raises(VerifierFailure, match="timeout"):
        check_failures(rows, max_failed_frac=0.5)
