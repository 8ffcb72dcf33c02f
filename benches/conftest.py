"""Shared helpers for the benchmarks (run with `make bench`)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = REPO.parent / "shared" / "traces"


def shared_trace(name: str):
    path = SHARED_TRACES / name
    if not path.exists():
        pytest.skip("../shared/traces not present: real public traces are not shipped with the repo")
    return path


@pytest.fixture(scope="session")
def conversation_trace():
    return shared_trace("conversation_trace.jsonl")


@pytest.fixture(scope="session")
def azure_trace():
    return shared_trace("AzureLLMInferenceTrace_conv.csv")


def report(benchmark, **figures):
    """Attach measured figures to the benchmark record and print them on one line."""
    benchmark.extra_info.update(figures)
    print("\n  " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                             for k, v in figures.items()))
