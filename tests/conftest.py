"""Session-wide test settings: one BLAS thread (the tests use tiny matmuls on a 2-core machine)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _single_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: tests only run slower without it
        yield
        return
    with threadpool_limits(1):
        yield


#: The long tests, marked ``slow`` here in one place so that ``pytest -m "not slow"`` is the
#: fast development loop (under a minute on 2 cores); the full run (CI) includes them.
#: Whole files: the planted-bug meta-suite, the conformance runs of whole backends, subprocess
#: training runs and benchmarks. Single tests: those measured above about one second.
SLOW_FILES = (
    "tests/test_sensitivity.py",
    "tests/test_conformance_ci.py",
    "tests/test_backends_jax_dask.py",
    "tests/test_docs_adding_backend.py",
    "tests/test_benchmarks_cpu.py",
    "tests/test_verify.py",
    "tests/test_cli_verify.py",
    "tests/test_errors_table.py",
    "tests/train/test_kill_resume.py",
    "tests/train/test_ddp.py",
    "tests/train/test_train_cli.py",
    "tests/train/test_resume.py",
    "tests/samplers/test_example_oracle.py",
    "tests/test_example_gmm_titles.py",
)
SLOW_TESTS = (
    "tests/peers/test_discrete.py::test_space_timesteps_every_single_section_count[4000]",
    "tests/unet/test_torch_unet.py::test_ddpm_cifar10_float32_matches_reference",
    "tests/unet/test_model.py::test_network_gradients_match_finite_differences",
    "tests/oracle/test_schedules_mpmath.py::test_tables_within_one_ulp_of_mpmath[",
    "tests/samplers/test_karras_dpm.py::test_lower_order_start_caps_the_multistep_order_at_two",
    "tests/oracle/test_schedule_properties.py::test_identities_of_random_schedules",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        node = item.nodeid
        if node.split("::")[0] in SLOW_FILES or any(
            node.startswith(s) and ("T4000" in node or "mpmath" not in s) for s in SLOW_TESTS
        ):
            item.add_marker(pytest.mark.slow)
