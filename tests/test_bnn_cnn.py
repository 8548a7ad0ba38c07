"""examples/bnn_cnn.py: end to end with tiny settings, and its pieces against known answers."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "bnn_cnn.py"


@pytest.fixture(scope="module")
def ex():
    spec = importlib.util.spec_from_file_location("example_bnn_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLASSIFIERS = ("S3HMC BNN", "Adam", "MC dropout")
TINY = [
    "--num-warmup", "20",
    "--num-samples", "10",
    "--num-chains", "1",  # a second sequential chain compiles again: 13 s more
    "--max-num-steps", "8",
    "--channels", "2",
    "--hidden", "8",
    "--map-steps", "300",
    "--sgd-steps", "300",
    "--dropout-samples", "5",
]  # fmt: skip


def test_bnn_cnn_runs(ex, tmp_path):
    assert ex.__doc__.lstrip().startswith("Example: ")
    args = ex.parse_args([*TINY, "--output-dir", str(tmp_path)])
    results = ex.main(args)
    for f in ("cnn_entropy.png", "cnn_precisions.png", "bnn_cnn.json"):
        assert (tmp_path / f).stat().st_size > 0, f
    numbers = json.loads((tmp_path / "bnn_cnn.json").read_text())
    assert set(results) == set(numbers)
    assert numbers["settings"]["num_samples"] == 10
    assert numbers["data"]["x_train"] + numbers["data"]["x_test"] == 1797
    assert (
        numbers["data"]["x_shuffled"] == numbers["data"]["x_rotated"] == numbers["data"]["x_test"]
    )
    # 9 * 2 + 2 (conv), (4 * 4 * 2) * 8 + 8 (dense), 8 * 10 + 10 (logits)
    assert numbers["num_parameters"] == 20 + 264 + 90
    for k in CLASSIFIERS:
        r = numbers[k]
        # 300 Adam steps (the MAP start of S3HMC, the baselines) are far above chance (0.1)
        assert 0.5 < r["test_accuracy"] <= 1, (k, r["test_accuracy"])
        assert 0 < r["test_nll"] < np.log(10)
        assert 0 <= r["test_ece"] <= 1
        for s in ("test", *ex.OOD_SETS):
            assert 0 <= r[f"mean_entropy_{s}"] <= np.log(10) + 1e-6
            assert r[f"mean_mutual_information_{s}"] >= -1e-6
        for s in ex.OOD_SETS:
            assert 0 <= r[f"auroc_{s}"] <= 1
    assert numbers["Adam"]["mean_mutual_information_test"] == 0.0
    sampler = numbers["S3HMC BNN"]["sampler"]
    # a step takes one or two gradients, 8 steps a draw; a rejected trajectory's retry
    # (16 steps) and its ghost (8) add theirs (test_trajectory counts them exactly)
    assert 8 <= sampler["grads_per_draw"] <= 2 * (8 + 16 + 8)
    assert sampler["max_rhat"] is None  # one chain (bnn_digits tests two)
    assert len(sampler["precisions"]) == 6  # kernel and bias of three layers
    # what the defaults chose: a coordinate system per weight site, a scheme per chain
    assert len(sampler["coordinates"]) == 6
    assert set(sampler["coordinates"].values()) <= {"centred", "noncentred"}
    assert len(sampler["no_u_turn_tree_by_chain"]) == 1


def test_expected_calibration_error_known_answers(ex):
    y = np.array([0, 1, 0, 1])
    # confident and right: 0
    assert ex.expected_calibration_error(np.eye(2)[y], y) == 0.0
    # confidence 0.9 everywhere, half right: |0.5 - 0.9|
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    np.testing.assert_allclose(ex.expected_calibration_error(p, np.array([0, 1, 1, 0])), 0.4)
    # two bins, weights 1/2 each: |1 - 0.95| and |0 - 0.6|
    p = np.array([[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.4, 0.6]])
    np.testing.assert_allclose(
        ex.expected_calibration_error(p, np.array([0, 1, 1, 0])), 0.5 * 0.05 + 0.5 * 0.6
    )


def test_auroc_matches_pairwise_count(ex):
    rng = np.random.default_rng(1)
    inside = rng.integers(0, 5, 40).astype(float)  # ties on purpose
    outside = rng.integers(2, 8, 30).astype(float)
    pairs = (outside[None] > inside[:, None]) + 0.5 * (outside[None] == inside[:, None])
    np.testing.assert_allclose(ex.auroc(inside, outside), pairs.mean())


def test_ood_sets(ex):
    data = ex.load_data(num_noise=50, seed=3)
    test = np.asarray(data["x_test"])
    assert test.shape[1:] == (8, 8, 1) and np.asarray(data["x_noise"]).shape == (50, 8, 8, 1)
    shuffled = np.asarray(data["x_shuffled"]).reshape(len(test), -1)
    np.testing.assert_array_equal(np.sort(shuffled, 1), np.sort(test.reshape(len(test), -1), 1))
    assert not np.array_equal(shuffled, test.reshape(len(test), -1))
    rotated = np.asarray(data["x_rotated"])
    np.testing.assert_allclose(np.rot90(1.0 - rotated, k=-1, axes=(1, 2)), test, atol=1e-6)
    for k in ("x_train", "x_test", "x_noise", "x_shuffled", "x_rotated"):
        assert 0.0 <= float(data[k].min()) and float(data[k].max()) <= 1.0
    assert set(np.unique(np.asarray(data["y_train"]))) == set(range(10))
