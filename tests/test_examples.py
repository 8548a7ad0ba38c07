"""Every example runs end to end with tiny settings and writes its figures and numbers."""

import importlib.util
import json
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--num-warmup", "20", "--num-samples", "10", "--num-chains", "2"]

CASES = {
    "funnel": ([], ["funnel.png", "funnel.json"]),
    "bimodal": ([], ["bimodal.png", "bimodal.json"]),
    "bnn_sine": (
        ["--map-steps", "20", "--ais-temps", "2", "--ais-particles", "2", "--skip-comparison"],
        ["sine_predictive.png", "sine_precisions.png", "bnn_sine.json"],
    ),
}
SINE_FULL = (
    ["--map-steps", "20", "--ais-temps", "2", "--ais-particles", "2"],
    CASES["bnn_sine"][1],
)


@pytest.mark.parametrize("name", list(CASES))
def test_example_runs(name, tmp_path):
    check(name, *CASES[name], tmp_path)


@pytest.mark.slow
def test_bnn_sine_full(tmp_path):
    """All three networks of bnn_sine (about 2.5 minutes on 2 cores)."""
    check("bnn_sine", *SINE_FULL, tmp_path)


def check(name, extra, files, tmp_path):
    module = load(name)
    assert module.__doc__.lstrip().startswith("Example: ")
    args = module.parse_args([*TINY, *extra, "--output-dir", str(tmp_path)])
    results = module.main(args)
    for f in files:
        path = tmp_path / f
        assert path.exists() and path.stat().st_size > 0, f
    numbers = json.loads((tmp_path / files[-1]).read_text())
    assert numbers["settings"]["num_samples"] == 10
    assert set(results) == set(numbers)
