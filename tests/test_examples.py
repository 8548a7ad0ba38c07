"""Every example runs end to end with tiny settings and writes its figures and numbers."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--num-warmup", "20", "--num-samples", "10"]

CASES = {
    "funnel": ([], ["funnel.png", "funnel.json"]),
    "bimodal": ([], ["bimodal.png", "bimodal.json"]),
    "bnn_sine": (
        ["--map-steps", "20", "--ais-temps", "2", "--ais-particles", "2", "--skip-comparison"],
        ["sine_predictive.png", "sine_precisions.png", "bnn_sine.json"],
    ),
    "bnn_diabetes": (
        ["--map-steps", "20", "--hidden", "4", "--samplers", "S3HMC"],
        ["diabetes_predictions.png", "diabetes_comparison.png", "bnn_diabetes.json"],
    ),
    "bnn_digits": (
        ["--map-steps", "20", "--sgd-steps", "20", "--dropout-samples", "5", "--hidden", "4"],
        ["digits_entropy.png", "digits_precisions.png", "bnn_digits.json"],
    ),
}
SINE_FULL = (
    ["--map-steps", "20", "--ais-temps", "2", "--ais-particles", "2"],
    CASES["bnn_sine"][1],
)


# one chain where the example's own code writes R-hat into its JSON from a
# compare_samplers table: R-hat is undefined with one chain, and the JSON must say
# null (not NaN, not a crash); two chains elsewhere (a float R-hat, and the
# multi-chain path of the examples that compute their own)
ONE_CHAIN = ("funnel", "bimodal", "bnn_diabetes")
# the default run keeps it under 15 minutes on 2 cores: the digits and diabetes BNNs
# (each about 40 s, most of it compiling S3HMC's pilot and sampler and NUTS) and the
# bimodal example (20 s) run with -m slow; bnn_sine and test_bnn_cnn cover the BNN
# example path by default, funnel the one-chain JSON path
SLOW_EXAMPLES = ("bnn_digits", "bnn_diabetes", "bimodal")
RUNS = [
    pytest.param(
        name,
        chains,
        id=f"{name}-{chains}chain",
        marks=[pytest.mark.slow] if name in SLOW_EXAMPLES else [],
    )
    for name in CASES
    for chains in ((1,) if name in ONE_CHAIN else (2,))
]


def max_rhats(name: str, numbers: dict) -> list:
    """The max R-hat of each sampler in an example's JSON (bnn_sine has none)."""
    if name in ("funnel", "bimodal"):
        return [v["max_rhat"] for k, v in numbers.items() if k not in ("exact", "settings")]
    if name == "bnn_diabetes":
        return [v["sampler"]["max_rhat"] for v in numbers.values() if "sampler" in v]
    if name == "bnn_digits":
        return [numbers["S3HMC BNN"]["sampler"]["max_rhat"]]
    return []


@pytest.mark.parametrize(("name", "num_chains"), RUNS)
def test_example_runs(name, num_chains, tmp_path):
    numbers = check(name, *CASES[name], tmp_path, num_chains=num_chains)
    assert numbers["settings"]["num_chains"] == num_chains
    rhats = max_rhats(name, numbers)
    assert rhats or name == "bnn_sine"
    for rhat in rhats:
        if num_chains == 1:
            assert rhat is None
        else:  # inf too: after 20 warmup draws a chain may not move in its 10 draws
            assert isinstance(rhat, float) and not np.isnan(rhat)
    if name in ("bnn_sine", "bnn_digits"):
        # what the defaults chose: a coordinate system per weight site, a scheme per chain
        if name == "bnn_sine":
            run = numbers["[1,50,1] all precisions sampled"]
        else:
            run = numbers["S3HMC BNN"]["sampler"]
        assert len(run["coordinates"]) == 4  # kernel and bias of two layers
        assert set(run["coordinates"].values()) <= {"centred", "noncentred"}
        assert len(run["no_u_turn_tree_by_chain"]) == num_chains
    if name == "bnn_diabetes":
        for k in ("MAP", "S3HMC"):
            assert np.isfinite(numbers[k]["rmse"]) and numbers[k]["rmse"] > 0
            assert np.isfinite(numbers[k]["log_likelihood_per_point"])
            assert 0 <= numbers[k]["coverage_68"] <= numbers[k]["coverage_95"] <= 1
        assert numbers["MAP"]["mean_epistemic_sd"] == 0.0
        # 0 where the chain rejected all 10 draws (20 warmup draws tune little)
        assert numbers["S3HMC"]["mean_epistemic_sd"] >= 0.0
    if name == "bnn_digits":
        for k in ("S3HMC BNN", "deterministic", "MC dropout"):
            assert 0 <= numbers[k]["test_accuracy"] <= 1
            for s in ("test", "unseen", "noise"):
                assert 0 <= numbers[k][f"mean_entropy_{s}"] <= np.log(5) + 1e-6
        assert numbers["deterministic"]["mean_mutual_information_test"] == 0.0


@pytest.mark.slow
def test_bnn_sine_full(tmp_path):
    """All three networks of bnn_sine (about 2.5 minutes on 2 cores)."""
    check("bnn_sine", *SINE_FULL, tmp_path)


@pytest.mark.slow
def test_bnn_diabetes_with_nuts(tmp_path):
    """bnn_diabetes with its NUTS baseline (about a minute on 2 cores)."""
    numbers = check(
        "bnn_diabetes", ["--map-steps", "20", "--hidden", "4"], CASES["bnn_diabetes"][1], tmp_path
    )
    assert {"MAP", "S3HMC", "NUTS"} <= set(numbers)


def test_diabetes_mixture_quantile():
    """One component: the Gaussian quantile; two: the CDF there is the level."""
    from scipy import stats

    ex = load("bnn_diabetes")
    means = np.array([[0.0, 1.0, -3.0]])
    sds = np.array([[1.0, 2.0, 0.5]])
    for prob in (0.025, 0.16, 0.5, 0.84, 0.975):
        q = ex.mixture_quantile(means, sds, prob)
        np.testing.assert_allclose(q, stats.norm.ppf(prob, means[0], sds[0]), atol=1e-4)
    means = np.array([[-2.0, 0.0], [3.0, 0.5]])
    sds = np.array([[1.0, 0.3], [0.5, 2.0]])
    for prob in (0.16, 0.84):
        q = ex.mixture_quantile(means, sds, prob)
        cdf = stats.norm.cdf((q[None] - means) / sds).mean(0)
        np.testing.assert_allclose(cdf, prob, atol=1e-4)


def test_diabetes_evaluate_known_answers():
    """A perfect-mean Gaussian: RMSE 0, log density and coverages exact."""
    from scipy import stats

    ex = load("bnn_diabetes")
    rng = np.random.default_rng(0)
    y = rng.normal(size=4000)
    out, _ = ex.evaluate(np.zeros((1, 4000)), np.ones((1, 4000)), y, y_sd=2.0)
    np.testing.assert_allclose(out["rmse"], 2.0 * np.sqrt(np.mean(y**2)), rtol=1e-6)
    np.testing.assert_allclose(
        out["log_likelihood_per_point"], np.mean(stats.norm.logpdf(y)) - np.log(2.0), rtol=1e-6
    )
    assert abs(out["coverage_68"] - 0.68) < 0.03
    assert abs(out["coverage_95"] - 0.95) < 0.015
    assert out["mean_epistemic_sd"] == 0.0
    # two draws whose means differ by 2: epistemic sd 1 (ddof=0)
    out, _ = ex.evaluate(np.stack([np.ones(4000), -np.ones(4000)]), np.ones((2, 4000)), y, 1.0)
    np.testing.assert_allclose(out["mean_epistemic_sd"], 1.0, rtol=1e-6)


def test_digits_auroc_matches_pairwise_count():
    ex = load("bnn_digits")
    rng = np.random.default_rng(1)
    inside = rng.integers(0, 5, 40).astype(float)  # ties on purpose
    outside = rng.integers(2, 8, 30).astype(float)
    pairs = (outside[None] > inside[:, None]) + 0.5 * (outside[None] == inside[:, None])
    np.testing.assert_allclose(ex.auroc(inside, outside), pairs.mean())
    assert ex.auroc(np.zeros(3), np.ones(4)) == 1.0
    assert ex.auroc(np.ones(3), np.zeros(4)) == 0.0


def check(name, extra, files, tmp_path, num_chains=2):
    module = load(name)
    assert module.__doc__.lstrip().startswith("Example: ")
    chains = ["--num-chains", str(num_chains)]
    args = module.parse_args([*TINY, *chains, *extra, "--output-dir", str(tmp_path)])
    results = module.main(args)
    for f in files:
        path = tmp_path / f
        assert path.exists() and path.stat().st_size > 0, f
    numbers = json.loads((tmp_path / files[-1]).read_text())
    assert numbers["settings"]["num_samples"] == 10
    assert set(results) == set(numbers)
    return numbers
