"""The performance suite's pieces: one cell end to end, the targets, the report file."""

import importlib.util
import json
import math
import pathlib
import sys

import pytest

from numpyro_s3hmc.compare import _model_sites

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def run():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("benchmarks_run", BENCHMARKS / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))


def test_models_have_their_three_forms(run):
    from models import benchmarks

    import jax

    for name, bench in benchmarks().items():
        centred = _model_sites(bench.centred, bench.args, {})
        assert set(bench.hyper) <= set(centred), name
        # the non-centred model samples raw sites and records the centred ones
        noncentred = _model_sites(bench.noncentred, bench.args, {})
        assert set(bench.hyper) <= set(noncentred) and set(noncentred) != set(centred), name
        hmc_sites = {k: v for k, v in _draw(bench).items() if k not in bench.hyper}
        draw = bench.gibbs_fn(jax.random.PRNGKey(0), {}, hmc_sites)
        assert set(draw) == set(bench.hyper), name
        assert all(float(v) > 0 for v in draw.values()), name


def _draw(bench):
    from numpyro.handlers import seed, trace

    tr = trace(seed(bench.centred, 0)).get_trace(*bench.args)
    return {k: s["value"] for k, s in tr.items() if s["type"] == "sample"}


def test_one_cell(run):
    row = run.run_cell("funnel 10-D", "S3HMC", quick=True, seed=0)
    assert row["num_samples"] == 300 and row["num_chains"] == 2
    assert 0 < row["min ESS bulk"] <= row["min ESS bulk hyper"]
    assert row["ESS/1k grads"] == pytest.approx(
        1000 * row["min ESS bulk"] / (row["grads/draw"] * 600), rel=0.01
    )
    assert row["peak memory (MB)"] > 0 and row["divergences"] == 0
    # the posterior is the prior: E[tau] = 2 within Monte Carlo error
    assert math.isfinite(row["E[tau] z"]) and abs(row["E[tau] z"]) < 4


def test_targets_and_scaling(run):
    def row(sampler, ess_s, ess_per_k):
        return {"sampler": sampler, "ESS/s": ess_s, "ESS/1k grads": ess_per_k}

    rows = {
        "funnel 10-D": [row("S3HMC", 100.0, 10.0), row("NUTS non-centred", 50.0, 100.0)],
        "funnel 100-D": [
            row("S3HMC", 100.0, 10.0),
            row("NUTS centred", 9.0, 1.0),
            row("NUTS non-centred", 50.0, 10.0),
        ],
        "BNN sine": [row("S3HMC", 2.0, 1.0), row("NUTS centred", 1.0, 1.0)],
    }
    slope, dims, costs = run.scaling(rows, "NUTS non-centred")
    assert dims == [10, 100] and slope == pytest.approx(1.0)
    assert run.scaling(rows, "S3HMC")[0] == pytest.approx(0.0)
    met = {t: ok for t, _, ok in run.targets(rows, [{"model": "BNN sine", "splitting": 1.5}])}
    assert met["funnel 100-D: min-ESS/s ≥ 10× NUTS centred"] == "yes"
    assert met["BNN sine: min-ESS/s ≥ 3× NUTS centred"] == "**no**"
    assert met["BNN sine: splitting step ≤ 1.3 gradients"] == "**no**"
    assert met[next(t for t in met if t.startswith("funnel: gradients"))] == "yes"


def test_report_keeps_the_text_around_it(run, tmp_path):
    path = tmp_path / "results.md"
    run.write_report(path, "first")
    assert "first" in path.read_text()
    path.write_text(
        path.read_text().replace("# Benchmarks", "# Benchmarks\n\nwhy we chose") + "\nend"
    )
    run.write_report(path, "second")
    text = path.read_text()
    assert "why we chose" in text and text.endswith("end") and "second" in text
    assert "first" not in text


def test_report_names_the_run_of_every_row_it_kept(run):
    # two subset runs in a row: the second's header must name both earlier runs, each
    # with its own rows, not the first subset's command as "the other rows"
    full, first, second = "day 1 by `run.py`", "day 2 by `run.py --models a`", "day 3"
    rows = {
        "a": [
            {"model": "a", "sampler": "S3HMC", "measured": first},
            {"model": "a", "sampler": "NUTS centred", "measured": full},
        ],
        "b": [
            {"model": "b", "sampler": "S3HMC", "measured": second},
            {"model": "b", "sampler": "NUTS centred", "measured": full},
        ],
    }
    text = run.provenance(rows, second)
    assert f"{full} (a / NUTS centred, b / NUTS centred)" in text
    assert f"{first} (a / S3HMC)" in text and second not in text
    assert run.provenance({"b": rows["b"][:1]}, second) is None


def load_peers():
    """benchmarks/peers.py as a module (BlackJAX itself is not needed to report)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("benchmarks_peers", BENCHMARKS / "peers.py")
        peers = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(peers)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return peers


def peer_row(ess, rhat=1.001):
    return {
        "ess_per_1k": ess,
        "tau_per_1k": ess,
        "rhat": rhat,
        "divergences": 0,
        "warmup_grads_per_chain": 1000.0,
    }


def test_peers_table_beats_only_converged_peers():
    # the BlackJAX peers' table (benchmarks/peers.py): a peer whose chains disagree
    # (R-hat > 1.01) is reported, not the bar
    peers, row = load_peers(), peer_row
    ours = {("m", s): [row(e)] for s, e in [("S3HMC", 60.0), ("NUTS centred", 10.0)]}
    ours[("m", "NUTS + LocScaleReparam(0)")] = [row(30.0)]
    cells = {("m", s): [row(20.0)] for s in peers.SAMPLERS}
    cells[("m", peers.SAMPLERS[0])] = [row(120.0, rhat=1.2)]  # fast and wrong: not the bar
    last = peers.markdown(cells, ["m"], [0], "cmd", ours=ours).splitlines()[4]
    assert last.startswith("| m | 60 | 30 | 120 (120); R-hat 1.200") and last.endswith(" 2.00× |")
    cells[("m", peers.SAMPLERS[1])] = [row(120.0)]
    last = peers.markdown(cells, ["m"], [0], "cmd", ours=ours).splitlines()[4]
    assert last.endswith(" 0.50× |")


def test_peers_figure_from_saved_runs(tmp_path, monkeypatch):
    peers, row = load_peers(), peer_row
    name = peers.hierarchical.MODELS[0]
    ours = {f"{name} | {s}": [row(e)] for s, e in [("S3HMC", 60.0), ("NUTS centred", 1.0)]}
    ours[f"{name} | NUTS + LocScaleReparam(0)"] = [row(30.0)]
    cells = {f"{name} | {s}": [row(20.0, rhat=1.001 + i)] for i, s in enumerate(peers.SAMPLERS)}
    (tmp_path / "hierarchical.json").write_text(json.dumps(ours))
    (tmp_path / "peers.json").write_text(json.dumps(cells))
    monkeypatch.setattr(peers, "HERE", tmp_path)
    peers.figure(tmp_path / "peers.png")  # the trajectory suite has no saved runs here
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"
