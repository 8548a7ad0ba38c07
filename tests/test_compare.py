"""compare_samplers, plot_comparison, the ArviZ export of S3HMC runs, and the demo."""

import functools

import numpy as np
import pandas as pd
import pytest

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, HMCGibbs

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc._arviz import arviz, dataset, group_names
from numpyro_s3hmc.compare import (
    _CompileTimer,
    _hyper_names,
    compare_samplers,
    hyperparameter_sites,
    plot_comparison,
)
from numpyro_s3hmc.demo import main

# The sampler's machinery in the model's own coordinates: coordinates="auto", the default,
# would non-centre the prior-dominated groups here (bypassing the semi-separable metric
# these tests check) and add a pilot run and its compilation to every test; it is tested
# in test_coupled_metric.py, test_exact.py, test_bnn*.py, test_discrete_and_missing.py
# and by the examples and the demo.
S3HMC = functools.partial(S3HMC, coordinates="centred")

az = arviz()  # 0.x or 1.x, without 0.23's import banner
Y = np.array([0.3, -1.2, 0.8, 0.1, -0.4], dtype=np.float32)
SAMPLE_STATS = ("diverging", "acceptance_rate", "lp", "step_size", "energy", "num_grad_evals")


def small_model(y=None):
    """A funnel with data: two Gamma precisions, a deterministic site."""
    tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
    tau_y = numpyro.sample("tau_y", dist.Gamma(3.0, 1.0))
    x = numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([5]).to_event(1))
    numpyro.deterministic("x_sum", jnp.sum(x))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(x, 1 / jnp.sqrt(tau_y)), obs=y)


@pytest.fixture(scope="module")
def comparison():
    kernels = {"S3HMC": S3HMC(small_model), "NUTS": NUTS(small_model)}
    table, idatas = compare_samplers(
        kernels,
        num_warmup=100,
        num_samples=100,
        num_chains=2,
        rng_key=jax.random.PRNGKey(1),
        progress_bar=False,
        y=Y,
    )
    return kernels, table, idatas


def test_export_s3hmc_default_fields():
    mcmc = MCMC(S3HMC(small_model), num_warmup=50, num_samples=50, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), y=Y)
    idata = az.from_numpyro(mcmc, log_likelihood=True)  # 1.x computes it only when asked
    for group in ("posterior", "sample_stats", "log_likelihood", "observed_data"):
        assert group in group_names(idata), group
    assert set(SAMPLE_STATS) <= set(idata.sample_stats.data_vars)
    assert idata.sample_stats["lp"].shape == (1, 50)
    # lp is minus the potential energy, which includes the log-Jacobian of log τ
    np.testing.assert_allclose(
        idata.sample_stats["lp"].values[0], -mcmc.get_extra_fields()["potential_energy"]
    )
    assert idata.log_likelihood["y"].shape == (1, 50, 5)
    np.testing.assert_allclose(idata.observed_data["y"].values, Y)


def test_export_from_comparison(comparison):
    _, _, idatas = comparison
    s3hmc, nuts = idatas["S3HMC"], idatas["NUTS"]
    for idata in (s3hmc, nuts):
        assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(
            group_names(idata)
        )
        assert idata.posterior["x"].shape == (2, 100, 5)
    assert set(SAMPLE_STATS) <= set(s3hmc.sample_stats.data_vars)
    assert {"diverging", "acceptance_rate", "lp", "step_size", "energy", "n_steps"} <= set(
        nuts.sample_stats.data_vars
    )


def test_table_matches_arviz(comparison):
    kernels, table, idatas = comparison
    assert list(table.index) == ["S3HMC", "NUTS"]
    # the model's hyperparameters, whatever coordinates the kernel chose to sample in
    assert table.attrs["hyper"] == ("tau", "tau_y")
    # S3HMC's chains on the tree (a short warmup has no trial: the static length)
    assert table.attrs["tree"] == {"S3HMC": 0}
    for name, idata in idatas.items():
        row = table.loc[name]
        latent = dataset(idata.posterior)[["tau", "tau_y", "x"]]  # not the deterministic x_sum
        bulk, tail = az.ess(latent, method="bulk"), az.ess(latent, method="tail")
        min_bulk = min(float(bulk[v].min()) for v in bulk.data_vars)
        assert abs(row["min ESS bulk"] - min_bulk) <= 0.5
        assert abs(row["min ESS tail"] - min(float(tail[v].min()) for v in tail.data_vars)) <= 0.5
        rhat = az.rhat(latent)
        assert row["max R-hat"] == pytest.approx(
            max(float(rhat[v].max()) for v in rhat.data_vars), abs=5e-4
        )
        for h in ("tau", "tau_y"):
            assert abs(row[f"ESS bulk {h}"] - float(bulk[h])) <= 0.5
        assert row["divergences"] == int(idata.sample_stats["diverging"].sum())

        counter = "num_grad_evals" if name == "S3HMC" else "n_steps"
        grads = int(idata.sample_stats[counter].sum())
        assert grads > 0
        assert row["grad evals"] == grads
        assert row["grads/draw"] == pytest.approx(grads / 200, rel=5e-3)
        assert row["ESS/1k grads"] == pytest.approx(1000 * min_bulk / grads, rel=5e-3)

        assert row["wall (s)"] >= row["compile (s)"] >= 0
        assert 0 < row["sampling (s)"] <= row["wall (s)"]
        assert row["ESS/s"] == pytest.approx(min_bulk / row["sampling (s)"], rel=0.02)
    text = table.T.to_string()
    assert "ESS bulk tau_y" in text and "nan" not in text.lower()


def test_figure_renders(comparison, tmp_path):
    _, table, idatas = comparison
    fig = plot_comparison(table, idatas)
    # two bar charts, then a trace and a rank plot per hyperparameter and sampler
    assert len(fig.axes) == 2 + 2 * 2 * 2
    titles = [ax.get_title() for ax in fig.axes]
    assert "S3HMC: tau" in titles and "NUTS: tau_y ranks" in titles
    path = tmp_path / "comparison.png"
    fig.savefig(path, dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = plot_comparison(table, idatas, hyper=["x"])  # a vector site: one row per element
    assert len(fig.axes) == 2 + 5 * 2 * 2


def test_hmc_gibbs_reads_the_inner_hmc_state():
    """HMCGibbs keeps NUTS's counters on ``hmc_state``: the table still has them."""

    def gibbs_fn(rng_key, gibbs_sites, hmc_sites):
        return {"tau": jax.random.gamma(rng_key, 2.0) / 2.0}  # any positive draw

    kernel = HMCGibbs(NUTS(small_model), gibbs_fn, ["tau"])
    table, idatas = compare_samplers(
        {"Gibbs": kernel},
        num_warmup=30,
        num_samples=30,
        num_chains=1,
        progress_bar=False,
        var_names=["x_sum"],  # a deterministic site, scored only when named
        y=Y,
    )
    ess = float(az.ess(dataset(idatas["Gibbs"].posterior)[["x_sum"]])["x_sum"])
    assert abs(table.loc["Gibbs", "min ESS bulk"] - ess) <= 0.5
    stats = idatas["Gibbs"].sample_stats
    assert table.loc["Gibbs", "grad evals"] == int(stats["hmc_state.num_steps"].sum()) > 0
    assert table.loc["Gibbs", "divergences"] == int(stats["hmc_state.diverging"].sum())


def test_a_misspelt_var_name_is_an_error_that_lists_the_sites():
    # it was dropped silently, and the table's ESS columns came back empty
    with pytest.raises(ValueError, match=r"\['thetaa'\].*sites: \["):
        compare_samplers(
            {"NUTS": NUTS(small_model)},
            num_warmup=10,
            num_samples=10,
            num_chains=1,
            progress_bar=False,
            var_names=["thetaa"],
            y=Y,
        )


def test_hyperparameter_sites():
    """The sites S3HMC would take as hyperparameters, whatever their prior; a Gamma
    site that scales no Normal child is not one; a model S3HMC refuses has none."""

    def model(y=None):
        a = numpyro.sample("a", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))
        s = numpyro.sample("s", dist.HalfCauchy(1.0))
        numpyro.sample("b", dist.Normal(0.0, s).expand([3]).to_event(1))
        with numpyro.plate("p", 2):
            numpyro.sample("c", dist.Gamma(1.0, 1.0))
        numpyro.sample("obs", dist.Gamma(a.sum(), 1.0), obs=y)

    assert hyperparameter_sites(model, y=1.0) == ("s",)

    def discrete():
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("x", dist.Normal(k, 1.0))

    assert hyperparameter_sites(discrete) == ()


def test_scored_hyperparameters_follow_the_s3hmc_kernels_settings():
    """Before its run an S3HMC kernel has no partition yet: its columns come from the
    partition its own hyper_sites will give, not from the default one."""

    def model():
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        t = numpyro.sample("t", dist.HalfNormal(1.0))
        numpyro.sample("x", dist.Normal(0.0, s).expand([3]))
        numpyro.sample("y", dist.Normal(0.0, t).expand([3]))

    assert _hyper_names(S3HMC(model), (), {}) == ["s", "t"]
    assert _hyper_names(S3HMC(model, hyper_sites={"t": False}), (), {}) == ["s"]


def test_compile_timer_counts_overlaps_once():
    timer = _CompileTimer()
    timer("/jax/core/compile/jaxpr_trace_duration", 0.0, 2.0)
    timer("/jax/core/compile/jaxpr_trace_duration", 1.0, 1.5)  # nested trace
    timer("/jax/core/compile/backend_compile_duration", 1.8, 3.0)
    timer("/jax/other_event", 5.0, 9.0)  # not compilation
    assert timer.seconds() == pytest.approx(3.0)
    assert timer.seconds(2.5, 10.0) == pytest.approx(0.5)


def test_demo_writes_outputs(tmp_path, capsys):
    status = main(
        [
            "--num-warmup",
            "20",
            "--num-samples",
            "20",
            "--num-chains",
            "1",
            "--seed",
            "3",
            "--no-progress-bar",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 0  # what the console script passes to sys.exit
    table = pd.read_csv(tmp_path / "comparison.csv", index_col="sampler")
    assert list(table.index) == ["S3HMC", "NUTS", "NUTS+reparam"]
    assert (table["ESS/1k grads"] > 0).all()
    assert {"ESS bulk tau_alpha", "ESS bulk tau_beta", "ESS bulk tau_y"} <= set(table.columns)
    out = capsys.readouterr().out
    assert "ESS/1k grads" in out and "comparison.png" in out
    for name in ("comparison.png", "comparison.csv", "s3hmc.nc", "nuts.nc", "nuts_reparam.nc"):
        assert (tmp_path / name).stat().st_size > 0
    idata = az.from_netcdf(tmp_path / "s3hmc.nc")
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(
        group_names(idata)
    )
    assert idata.posterior["beta"].shape == (1, 20, 8, 6)


def test_a_chain_that_never_moves_is_reported_not_raised():
    """A zero-variance chain would make ArviZ divide by zero: R-hat is inf, no warning."""
    table, _ = compare_samplers(
        {"stuck": S3HMC(small_model, step_size=1e3, adapt_step_size=False, num_steps=1)},
        num_warmup=0,
        num_samples=5,
        num_chains=2,
        progress_bar=False,
        y=Y,
    )
    assert table.loc["stuck", "max R-hat"] == np.inf or np.isnan(table.loc["stuck", "max R-hat"])
