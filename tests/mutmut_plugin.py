"""pytest plugin used only by `make mutate` (loaded with ``-p mutmut_plugin``).

mutmut runs each mutant's tests with ``-x``, so the first failing test kills it;
running the cheap unit-test files before the multi-second training runs makes
killed mutants cheap. Verdicts do not change: a survivor runs every selected
test either way. Files not listed go last; order within a file is unchanged.
"""

ORDER = (
    "test_grpo.py",
    "test_learning.py",
    "test_update.py",
    "test_memory_path.py",
    "test_verifiers.py",
    "test_math_verifier.py",
    "test_code_verifier.py",
    "test_grader_attacks.py",
    "test_golden.py",
    "test_smoke.py",
)


def pytest_collection_modifyitems(session, config, items):
    def key(item):
        name = item.path.name
        return (ORDER.index(name) if name in ORDER else len(ORDER)), str(item.path), item.reportinfo()[1] or 0

    items.sort(key=key)
