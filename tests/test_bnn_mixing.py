"""benchmarks/bnn_mixing.py: its models' two forms, the function-space draws, the table."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

import jax

from numpyro.handlers import seed, trace
from numpyro.infer import Predictive

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def mixing():
    spec = importlib.util.spec_from_file_location("bnn_mixing", BENCHMARKS / "bnn_mixing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnn_mixing"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bnn_mixing"]


def test_noncentred_form_and_function_space(mixing):
    centred, noncentred, (x, y), x_test = mixing.problem("mlp-1k")
    assert x_test.shape[0] == mixing.NUM_TEST
    sites = trace(seed(noncentred, 0)).get_trace(x, y)
    # NUTS + LocScaleReparam(0): every layer's kernel and bias non-centred, the
    # precisions as written
    # (random_flax_module's scope prefixes the new site's name once more)
    decentred = [k for k, v in sites.items() if v["type"] == "sample" and "decentered" in k]
    assert decentred == [f"net/{site}_decentered" for site in centred.param_sites]
    for site in centred.param_sites:
        assert sites[site]["type"] == "deterministic"
    for site in centred.precision_sites:
        assert sites[site]["type"] == "sample"
    # prior draws shaped (chains, draws, ...): probabilities of every image and class
    prior = Predictive(centred, num_samples=6)(jax.random.PRNGKey(0), x_test)
    draws = {k: np.reshape(v, (2, 3, *v.shape[1:])) for k, v in prior.items() if k != "y"}
    probs = mixing.function_space(centred, draws, x_test)
    assert probs.shape == (2, 3, mixing.NUM_TEST * 10)
    np.testing.assert_allclose(probs.reshape(2, 3, -1, 10).sum(-1), 1.0, rtol=1e-5)
    # the draws of chain 1 are chain 1's: its first draw's predictions
    first = Predictive(centred, {k: v[1, :1] for k, v in draws.items()})
    expected = first(jax.random.PRNGKey(1), x_test, record_outputs=True)["probs"]
    np.testing.assert_allclose(probs[1, 0], np.ravel(expected[0]), rtol=1e-5)


def test_table_ratio_is_against_the_better_nuts(mixing):
    def rows(ess, probs_min):
        row = {
            "theta": 1210,
            "ess_per_1k": ess,
            "rhat": 1.0,
            "probs_min_ess_per_1k": probs_min,
            "probs_median_ess_per_1k": 2 * probs_min,
            "probs_rhat": 1.0,
            "divergences": 0,
            "grads_per_draw": 100.0,
            "warmup_grads_per_draw": 100.0,
        }
        cell = {"settings": "2 × 5 + 5", "seeds": [0], "command": "c", "measured": "d"}
        return {**cell, "rows": [row]}

    saved = {
        "mlp-1k | S3HMC auto": rows(3.0, 1.0),
        "mlp-1k | NUTS centred": rows(0.5, 4.0),
        "mlp-1k | NUTS non-centred": rows(1.5, 2.0),
    }
    text = mixing.markdown(saved)
    ratio = [line for line in text.splitlines() if "S3HMC / better NUTS" in line]
    # precisions 3 / max(0.5, 1.5); probabilities' min 1 / max(4, 2), median 2 / 8
    assert ratio == ["| mlp-1k | | S3HMC / better NUTS | | 2.00× | | 0.25× | 0.25× | | | |"]
    assert "mlp-10k" not in text


def test_a_run_of_other_seeds_adds_to_the_saved_ones(mixing):
    def cells(*values):
        return {("mlp-1k", "S3HMC auto"): [{"ess_per_1k": v} for v in values]}

    saved = mixing.merge({}, cells(1.0), [0], "2 × 5 + 5", "a")
    mixing.merge(saved, cells(2.0, 3.0), [2, 1], "2 × 5 + 5", "b")
    cell = saved["mlp-1k | S3HMC auto"]
    assert cell["seeds"] == [0, 1, 2] and cell["command"] == "a; b"
    assert [r["ess_per_1k"] for r in cell["rows"]] == [1.0, 3.0, 2.0]
    # other settings replace the saved seeds
    mixing.merge(saved, cells(4.0), [0], "4 × 5 + 5", "c")
    assert saved["mlp-1k | S3HMC auto"]["seeds"] == [0]
    assert saved["mlp-1k | S3HMC auto"]["command"] == "c"
