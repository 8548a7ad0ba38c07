"""S3HMC inside numpyro.infer.MCMC: execution modes, resume, fields, faults."""

import functools
import pickle

import cloudpickle
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, init_to_median

from numpyro_s3hmc import S3HMC
from numpyro_s3hmc.metrics import param_diagonal

# The sampler's machinery in the model's own coordinates: coordinates="auto", the default,
# would non-centre the prior-dominated groups here (bypassing the semi-separable metric
# these tests check) and add a pilot run and its compilation to every test; it is tested
# in test_coupled_metric.py, test_exact.py, test_bnn*.py, test_discrete_and_missing.py
# and by the examples and the demo.
S3HMC = functools.partial(S3HMC, coordinates="centred")

X = jax.random.normal(jax.random.PRNGKey(1), (30, 3))
Y = X @ jnp.array([1.0, -1.0, 0.5]) + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (30,))


def regression(X, y=None):
    tau_w = numpyro.sample("tau_w", dist.Gamma(2.0, 1.0))
    w = numpyro.sample("w", dist.Normal(0, 1 / jnp.sqrt(tau_w)).expand([X.shape[1]]))
    tau_y = numpyro.sample("tau_y", dist.Gamma(2.0, 1.0))
    numpyro.sample("y", dist.Normal(X @ w, 1 / jnp.sqrt(tau_y)), obs=y)


def run(kernel=None, *, num_chains=1, chain_method="sequential", seed=0, **mcmc_kwargs):
    mcmc = MCMC(
        kernel or S3HMC(regression),
        num_warmup=mcmc_kwargs.pop("num_warmup", 100),
        num_samples=mcmc_kwargs.pop("num_samples", 100),
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
        **mcmc_kwargs,
    )
    mcmc.run(jax.random.PRNGKey(seed), X, Y)
    return mcmc


@pytest.mark.parametrize(
    "chain_method",
    # sequential is how most other tests here run; its own check runs with -m slow
    [pytest.param("sequential", marks=pytest.mark.slow), "vectorized", "parallel"],
)
def test_chain_methods_agree_in_law(chain_method):
    mcmc = run(num_chains=2, chain_method=chain_method, num_warmup=300, num_samples=300)
    w = mcmc.get_samples(group_by_chain=True)["w"]
    assert w.shape == (2, 300, 3)
    # least squares is the posterior mean up to shrinkage well below 0.1 here
    ls = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(w).mean((0, 1)), ls, atol=0.1)
    assert int(mcmc.get_extra_fields()["diverging"].sum()) == 0
    if chain_method == "parallel":  # one chain per host device (conftest makes two)
        assert len(mcmc.last_state.z["w"].sharding.device_set) == 2


def test_same_key_same_draws():
    mcmc = run()
    a = mcmc.get_samples()["w"]
    again = []
    for seed in (0, 1):  # the same MCMC object: a fresh start from each key, one compile
        mcmc.run(jax.random.PRNGKey(seed), X, Y)
        again.append(mcmc.get_samples()["w"])
    np.testing.assert_array_equal(a, again[0])
    assert not np.array_equal(a, again[1])


def test_auto_without_a_trial_is_the_static_kernel_opening_window_included():
    # below 400 warmup iterations "auto" has no trial and runs the static length, with
    # the multinomial opening window that frees a chain started far above the bulk: the
    # same draws as "static" for the same key (a version without the window differed)
    kw = dict(num_warmup=100, num_samples=50)
    runs = [run(S3HMC(regression, trajectory=t), **kw) for t in ("auto", "static")]
    auto, static = (m.get_samples()["w"] for m in runs)
    np.testing.assert_array_equal(auto, static)
    assert not bool(runs[0].last_state.metric_state.use_tree)


def test_a_one_window_warmup_tests_end_points_in_its_second_half():
    # the multinomial opening window is NumPyro's initial buffer; a warmup too short
    # for more than one window (below 20) keeps its second half for the end point's
    # test, on which the sampling phase's step size must be adapted (with the whole
    # warmup multinomial, a 15-iteration warmup of a BNN diverged at every draw)
    kernel = S3HMC(regression)
    kernel.init(jax.random.PRNGKey(0), 15, model_args=(X, Y))
    assert kernel._tree_until == 7
    kernel.init(jax.random.PRNGKey(0), 1000, model_args=(X, Y))
    assert kernel._tree_until == 75


@pytest.mark.parametrize("trajectory", ["static", "nuts", "auto"])
def test_step_size_search_inside_the_transition_is_the_separate_search(trajectory):
    # the first warmup iteration searches the step size through the transition's own
    # call (one compiled copy of the integrator); vectorized chains search in a loop of
    # their own: both find the same size and draw the same transition, in float64
    with jax.enable_x64(True):
        kernel = S3HMC(regression, trajectory=trajectory, step_size=30.0)
        state = kernel.init(jax.random.PRNGKey(3), 1000, model_args=(X, Y))
        sample = functools.partial(kernel._sample_chain, model_args=(X, Y), model_kwargs={})
        folded = jax.jit(sample)(state)
        separate = jax.jit(functools.partial(sample, fold_search=False))(state)
        for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(separate), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
        # the search did run: from a start far too large it halved the size many times
        assert float(folded.adapt_state.step_size) < 30.0 / 4


def test_default_fields_for_arviz():
    fields = run().get_extra_fields()
    for name in (
        "diverging",
        "potential_energy",
        "energy",
        "accept_prob",
        "num_grad_evals",
        "adapt_state.step_size",
    ):
        assert fields[name].shape == (100,), name
    assert "num_steps" not in fields  # ArviZ would call it tree_depth
    # splitting: one gradient per integrator step
    assert int(fields["num_grad_evals"].min()) >= 1


def test_grad_count_per_integrator():
    for integrator, per_step in (("splitting", 1), ("alba", 3), ("implicit_alba", 3)):
        mcmc = MCMC(
            S3HMC(regression, integrator=integrator),
            num_warmup=20,
            num_samples=20,
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(0), X, Y, extra_fields=("num_integrator_steps",))
        f = mcmc.get_extra_fields()
        steps = np.asarray(f["num_integrator_steps"])
        np.testing.assert_array_equal(np.asarray(f["num_grad_evals"]), per_step * steps)


def test_warmup_then_run_twice():
    # (resuming from last_state is checked with the pickle round trip below)
    mcmc = MCMC(S3HMC(regression), num_warmup=100, num_samples=50, progress_bar=False)
    mcmc.warmup(jax.random.PRNGKey(0), X, Y)
    warm = mcmc.post_warmup_state
    step_size = float(warm.adapt_state.step_size)
    draws = []
    for _ in range(2):
        mcmc.run(jax.random.PRNGKey(1), X, Y)
        draws.append(mcmc.get_samples()["w"])
        # each run starts from the post-warmup state, and adapts nothing
        assert int(mcmc.last_state.i) == 150
        assert float(mcmc.last_state.adapt_state.step_size) == step_size
        np.testing.assert_array_equal(
            mcmc.last_state.metric_state.data_precision, warm.metric_state.data_precision
        )
    assert draws[0].shape == (50, 3)
    np.testing.assert_array_equal(draws[0], draws[1])  # same key, same start: same draws


def test_pickle_and_cloudpickle_then_continue():
    # a model built inside a function pickles only with cloudpickle; after the
    # reload, sampling continues from last_state and draws what the original draws
    def make_model(scale):
        def model():
            tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
            numpyro.sample("x", dist.Normal(0.0, scale / jnp.sqrt(tau)).expand([3]))

        return model

    mcmc = MCMC(S3HMC(make_model(2.0)), num_warmup=50, num_samples=20, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    restored = cloudpickle.loads(cloudpickle.dumps(mcmc))
    for m in (mcmc, restored):
        m.post_warmup_state = m.last_state
        m.run(jax.random.PRNGKey(1))
        assert int(m.last_state.i) == 90
    np.testing.assert_array_equal(restored.get_samples()["x"], mcmc.get_samples()["x"])


def test_jit_model_args_no_retrace_for_new_data(monkeypatch):
    # count the traces of the model made inside the compiled sampler (where the data
    # are tracers), and XLA's compilations. The progress bar keeps NumPyro's own
    # collection loop compiled once; without it NumPyro re-jits that loop on every
    # run, for every kernel (NUTS included), though not the kernel's step. NumPyro
    # turns the bar off wherever the environment has CI set, or in a pytest-xdist
    # worker: unset both here.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    traces = []

    def counted(X, y=None):
        if isinstance(y, jax.core.Tracer):
            traces.append(y.shape)
        regression(X, y)

    compiles = []

    def listener(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    mcmc = MCMC(
        S3HMC(counted), num_warmup=100, num_samples=100, jit_model_args=True, progress_bar=True
    )
    mcmc.run(jax.random.PRNGKey(0), X, Y)
    first = len(traces)
    assert first > 0
    new_y, short_x, short_y = -Y, X[:20], Y[:20]  # eager ops compile too: before listening
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        mcmc.run(jax.random.PRNGKey(3), X, new_y)  # new data, same shape
        assert len(traces) == first and compiles == []
        w = mcmc.get_samples()["w"]
        assert float(jnp.mean(w[:, 0])) < 0  # really sampled the new data
        mcmc.run(jax.random.PRNGKey(3), short_x, short_y)  # another shape: traced again
        assert len(traces) > first and len(compiles) > 0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def test_init_params_and_init_strategy():
    init = {"w": jnp.zeros(3), "tau_w": jnp.array(0.0), "tau_y": jnp.array(1.0)}
    mcmc = MCMC(S3HMC(regression), num_warmup=0, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), X, Y, init_params=init)
    assert mcmc.get_samples()["w"].shape == (1, 3)
    mcmc = run(S3HMC(regression, init_strategy=init_to_median))
    assert mcmc.get_samples()["tau_y"].shape == (100,)


def test_model_property_and_partition():
    kernel = S3HMC(regression)
    assert kernel.model is regression and kernel.partition is None
    mcmc = run(kernel)
    assert kernel.partition.hyper == ("tau_w", "tau_y")
    # a module-level model pickles with the standard library too
    plain = pickle.loads(pickle.dumps(mcmc))
    assert plain.sampler.partition.hyper == ("tau_w", "tau_y")
    np.testing.assert_array_equal(plain.get_samples()["w"], mcmc.get_samples()["w"])


def gaussian_no_hyper():
    numpyro.sample("x", dist.Normal(jnp.array([2.0, -2.0]), 1.0).to_event(1))


def assert_all_floats(tree, dtype, what):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            assert jnp.result_type(leaf) == dtype, f"{what}{jax.tree_util.keystr(path)}"


@pytest.mark.parametrize(
    "model, integrator, trajectory",
    [(regression, "implicit_alba", "static"), (gaussian_no_hyper, "splitting", "nuts")],
    ids=["regression-implicit_alba", "no-hyperparameters-splitting-nuts"],
)
def test_float64_everywhere(model, integrator, trajectory):
    # x64 is process-global in JAX; the context manager scopes it to this test.
    # The no-hyperparameter model once failed here: its empty η block was float32.
    with jax.enable_x64(True):
        args = (X.astype(jnp.float64), Y.astype(jnp.float64)) if model is regression else ()
        kernel = S3HMC(model, integrator=integrator, trajectory=trajectory)
        mcmc = MCMC(kernel, num_warmup=50, num_samples=20, progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), *args, extra_fields=("fixed_point_iters",))
        assert_all_floats(mcmc.last_state, jnp.float64, "last_state")
        assert_all_floats(mcmc.get_samples(), jnp.float64, "samples")
        assert_all_floats(mcmc.get_extra_fields(), jnp.float64, "extra fields")
        assert np.all(np.isfinite(np.asarray(mcmc.get_samples()["w" if args else "x"])))


def test_more_chains_than_devices_fall_back():
    assert jax.local_device_count() == 2  # conftest: two host devices
    with pytest.warns(UserWarning, match="not enough devices to run parallel chains"):
        mcmc = run(num_chains=3, chain_method="parallel", num_warmup=150, num_samples=150)
    w = mcmc.get_samples(group_by_chain=True)["w"]
    assert w.shape == (3, 150, 3)
    ls = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0]
    np.testing.assert_allclose(np.asarray(w).mean((0, 1)), ls, atol=0.1)
    # three different chains, not one chain three times
    assert not np.array_equal(w[0], w[1]) and not np.array_equal(w[1], w[2])


def test_no_hyperparameters_runs():
    mcmc = MCMC(S3HMC(gaussian_no_hyper), num_warmup=200, num_samples=400, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    np.testing.assert_allclose(mcmc.get_samples()["x"].mean(0), [2.0, -2.0], atol=0.3)


def test_bad_input_errors():
    def discrete():
        numpyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="'k'"):
        MCMC(S3HMC(discrete), num_warmup=1, num_samples=1).run(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Observed site 'y'"):
        run(S3HMC(regression)).run(jax.random.PRNGKey(0), X, Y.at[0].set(jnp.inf))
    with pytest.raises(ValueError, match="integrator must be one of"):
        S3HMC(regression, integrator="rk4")
    # NUTS's potential_fn= has no sample sites to find the blocks in: refused, and
    # the advice names what works
    with pytest.raises(ValueError, match=r"potential_fn=.*S3HMC\(model\).*NUTS\(potential_fn"):
        S3HMC(potential_fn=lambda z: jnp.sum(z**2))
    with pytest.raises(ValueError, match=r"needs a NumPyro model.*S3HMC\(model\)"):
        S3HMC()


def test_adapted_trajectory_length_on_funnel():
    def funnel():
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        numpyro.sample("x", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([50]))

    # centred (coordinates="auto" picks non-centred here, below)
    kernel = S3HMC(funnel, coordinates="centred")
    mcmc = MCMC(kernel, num_warmup=500, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    state = mcmc.last_state
    # 0.7 π sqrt(Var[log τ] c) with Var[log τ] = ψ'(2) ≈ 0.645 and c = 26: ≈ 9.0
    assert 6.3 < float(state.metric_state.trajectory_length) < 11.9
    # prior-only: no excess curvature survives its noise on most coordinates, so the
    # default metric stays the paper's (scale 1, nothing added)
    assert float(jnp.median(state.metric_state.prior_scale)) < 1.1
    assert float(jnp.max(state.metric_state.data_precision)) == 0.0
    # non-centred, the whitened θ̃ set the length, and the elements free of η being
    # Gaussian in the metric's units it is exactly 0.7 π (the whole half period is kept
    # where they are wide: the next test)
    noncentred = S3HMC(funnel, coordinates="noncentred")
    mcmc = MCMC(noncentred, num_warmup=300, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    np.testing.assert_allclose(mcmc.last_state.metric_state.trajectory_length, 0.7 * np.pi)
    fixed = S3HMC(funnel, trajectory_length=3.0)
    mcmc = MCMC(fixed, num_warmup=300, num_samples=1, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    assert float(mcmc.last_state.metric_state.trajectory_length) == 3.0


def test_adapted_trajectory_length_counts_wide_free_elements():
    """θ elements free of η with a variance v wider than their metric G says have
    variance G·v in the metric's units, not 1, and the length is π sqrt(G v) where that
    is the largest. Here x is ungoverned and bimodal, ½N(−2, 1) + ½N(2, 1): v = 5 and
    F·v ≈ 3.63 (quadrature below), so G·v is F·v under ungoverned_mass="gradient"
    (G = F) and sqrt(F·v) under the default "fisher" (G = sqrt(F/v)). Counting x as
    whitened gave π (τ is tight, so η's term is about π): 3.14–3.47."""

    def model():
        tau = numpyro.sample("tau", dist.Gamma(20.0, 20.0))
        numpyro.sample("w", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([2]))
        modes = dist.Normal(jnp.array([-2.0, 2.0]), 1.0)
        mixture = dist.MixtureSameFamily(dist.Categorical(jnp.array([0.5, 0.5])), modes)
        numpyro.sample("x", mixture.expand([5]))

    grid = np.linspace(-12.0, 12.0, 20001)
    left, right = np.exp(-0.5 * (grid + 2) ** 2), np.exp(-0.5 * (grid - 2) ** 2)
    density = (left + right) / np.sum(left + right)
    score = -((grid + 2) * left + (grid - 2) * right) / (left + right)
    fv = np.sum(density * score**2) * np.sum(density * grid**2)
    assert 3.5 < fv < 3.8
    for mass, units in (("gradient", fv), ("fisher", np.sqrt(fv))):
        mcmc = MCMC(
            S3HMC(model, ungoverned_mass=mass),
            num_warmup=1000,
            num_samples=1,
            num_chains=2,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(0))
        length = np.asarray(mcmc.last_state.metric_state.trajectory_length)
        # the window's F and v from a few hundred autocorrelated draws: 15% on the length
        np.testing.assert_allclose(length, np.pi * np.sqrt(units), rtol=0.15)


@pytest.mark.parametrize("vectorized", [False, True])
def test_warmup_restarts_a_trapped_chain_from_the_pilots_end_state(vectorized):
    """A chain whose step size collapsed 100-fold from the one found at its start and
    whose potential lies far above the coordinates pilot's end state (a BNN's chain in a
    stiff tail, docs/design.md §6) restarts there, at the start of an early warmup
    window, with init's metric and a searched step size; a chain that meets one of the
    two conditions, or the iteration that starts no such window, is left alone, and in
    a vectorized run so are the other chains, bit for bit."""
    from numpyro_s3hmc import S3HMC as AutoS3HMC

    kernel = AutoS3HMC(regression)  # coordinates="auto": the pilot gives the restart point
    key = jax.random.PRNGKey(0)
    state = kernel.init(jax.random.split(key) if vectorized else key, 200, model_args=(X, Y))
    assert kernel.coordinates is not None and kernel._restart_at[:2] == (75, 100)
    sample = jax.jit(lambda s: kernel.sample(s, (X, Y), {}))
    for _ in range(3):  # past the first iteration's search
        state = sample(state)
    z_r, pe_r, _ = state.restart_point
    found = state.metric_state.found_step_size
    assert np.all(np.asarray(found) != kernel._step_size)
    gap = 10.0 + 5.0 * np.sqrt(4 / 2)  # restart_gap: w's 3 elements and τ_w, τ_y (η: 2)
    trapped_chain = np.array([False, True]) if vectorized else np.array(True)

    def forged(i, collapse, above):
        step = state.adapt_state.step_size
        pe = state.potential_energy
        step = jnp.where(trapped_chain & collapse, found * 1e-3, step)
        pe = jnp.where(trapped_chain & above, pe_r + gap + 1.0, jnp.minimum(pe, pe_r))
        return state._replace(
            i=jnp.full_like(state.i, i),
            potential_energy=pe,
            adapt_state=state.adapt_state._replace(step_size=step),
        )

    def restarts(s):
        return np.asarray(sample(s).metric_state.restarts)

    new = sample(forged(75, True, True))
    np.testing.assert_array_equal(new.metric_state.restarts, trapped_chain.astype(int))
    size = np.asarray(new.adapt_state.step_size)[trapped_chain]
    assert np.all(size > np.asarray(found)[trapped_chain] / 100)  # searched afresh
    # the search ran from init's step size (doubling or halving it), not the collapsed
    # one, and its result is the reference for a later collapse
    refound = np.asarray(new.metric_state.found_step_size)[trapped_chain]
    powers = np.log2(refound / kernel._step_size)
    np.testing.assert_array_equal(powers, np.round(powers))
    for i, collapse, above in ((76, True, True), (75, False, True), (75, True, False)):
        assert not restarts(forged(i, collapse, above)).any()
    if vectorized:  # the other chain: as if no chain were trapped
        calm = sample(forged(75, False, False))
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(calm), strict=True):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b)[0])
    # the restart itself: the pilot's point, init's metric, the window kept
    one = (
        jax.tree.map(lambda v: v[1], forged(75, True, True))
        if vectorized
        else forged(75, True, True)
    )
    restarted, stuck = kernel._restart_if_trapped(one)
    assert bool(stuck)
    r = jax.tree.map(lambda v: v[1], state.restart_point) if vectorized else state.restart_point
    for a, b in zip(
        jax.tree.leaves((restarted.z, restarted.potential_energy, restarted.z_grad)),
        jax.tree.leaves(r),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert int(restarted.adapt_state.window_idx) == int(one.adapt_state.window_idx)
    np.testing.assert_array_equal(restarted.adapt_state.inverse_mass_matrix, 1.0)
    np.testing.assert_array_equal(restarted.metric_state.prior_scale, 1.0)


def test_prior_scale_matches_the_likelihood_curvature():
    """mu ~ N(0, 1/sqrt(tau)) and 50 observations y ~ N(mu, 1/sqrt(tau)): the
    posterior curvature of mu is 51 tau. The default (coupled) metric has it exactly
    from the model, as a function of tau. Without it, the adaptation (``prior*fisher``)
    scales the prior precision by about 51, less three standard errors of the
    estimate (it errs low on purpose: 29 on jax 0.10.0, 35 on 0.10.2, the chains'
    round-off differing); "prior+fisher" adds about 50 E[tau]."""

    def model(y):
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        mu = numpyro.sample("mu", dist.Normal(0.0, 1 / jnp.sqrt(tau)))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1 / jnp.sqrt(tau)), obs=y)

    y = jax.random.normal(jax.random.PRNGKey(3), (50,))
    # by default the observations' Fisher information 50 tau is exact, not adapted
    exact = MCMC(S3HMC(model), num_warmup=500, num_samples=1, progress_bar=False)
    exact.run(jax.random.PRNGKey(0), y)
    state = exact.last_state
    _, metric, _ = exact.sampler._hamiltonian_parts((y,), {}, state.metric_state, jnp.float32)
    tau = jnp.exp(state.z["tau"])
    np.testing.assert_allclose(param_diagonal(metric, state.z["tau"][None]), 51 * tau, rtol=0.1)
    np.testing.assert_allclose(
        param_diagonal(metric, state.z["tau"][None] + 1.0), 51 * tau * np.e, rtol=0.1
    )

    scaled = MCMC(
        S3HMC(model, coupled_metric=False), num_warmup=500, num_samples=1, progress_bar=False
    )
    scaled.run(jax.random.PRNGKey(0), y)
    assert 20.0 < float(scaled.last_state.metric_state.prior_scale[0]) < 70.0
    assert float(scaled.last_state.metric_state.data_precision[0]) == 0.0
    added = MCMC(
        S3HMC(model, param_metric="prior+fisher", coupled_metric=False),
        num_warmup=500,
        num_samples=1,
        progress_bar=False,
    )
    added.run(jax.random.PRNGKey(0), y)
    state = added.last_state.metric_state
    assert float(state.prior_scale[0]) == 1.0
    tau = float(jnp.exp(added.last_state.z["tau"]))  # z is log tau
    assert 20.0 * tau < float(state.data_precision[0]) < 100.0 * tau
