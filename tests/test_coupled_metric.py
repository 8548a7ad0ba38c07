"""The coupled prior-Fisher metric G_θ(η) = (I − B)ᵀW(η)(I − B) + D(η) and the
location parents behind it (docs/design.md §3.1).

Structured linear algebra against dense float64, the integrators on a coupled
metric (reversible, volume-preserving, second order), what the partition finds,
and exactness: a prior-only funnel with a location parent (the posterior is the
prior) and eight schools, centred, against its posterior by quadrature.
"""

import numpy as np
import pytest
from exact_answers import assert_mean

import jax
import jax.numpy as jnp

import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_s3hmc import S3HMC, partition_sites
from numpyro_s3hmc.integrators import INTEGRATORS, IntegratorState, build_integrator
from numpyro_s3hmc.kernel import noncentred_by_statistic
from numpyro_s3hmc.metrics import (
    LocationCoupling,
    SemiSeparableMetric,
    coupling_energy,
    coupling_energy_grad,
    hamiltonian,
    param_diagonal,
    param_logdet_and_solve,
    sample_momentum,
)

# --- structured linear algebra -------------------------------------------------

N, PARENTS = 9, np.array([0, 4, 7])  # parents 4 and 7 have parent 0 (nested groups)
ROWS = np.array([1, 2, 3, 5, 6, 8])


def random_metric(rng, data_zero=False):
    b_rows = rng.normal(size=(ROWS.size, PARENTS.size)) * (rng.uniform(size=(6, 3)) < 0.6)
    b_parents = np.zeros((3, 3))
    b_parents[1:, 0] = rng.normal(size=2)
    coupling = LocationCoupling(PARENTS, ROWS, jnp.asarray(b_rows), jnp.asarray(b_parents))
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=N))
    d = np.where(rng.uniform(size=N) < 0.5, 0.0, rng.uniform(0.1, 3.0, size=N))
    d = jnp.zeros(N) if data_zero else jnp.asarray(d)
    metric = SemiSeparableMetric(
        lambda eta: scale * jnp.exp(eta[0]), jnp.ones(1), lambda eta: d * jnp.exp(eta[1]), coupling
    )
    a = np.eye(N)
    for i, r in enumerate(ROWS):
        a[r, PARENTS] -= b_rows[i]
    for i, r in enumerate(PARENTS):
        a[r, PARENTS] -= b_parents[i]

    def dense(eta):
        eta = np.asarray(eta)
        w = np.asarray(scale) * np.exp(eta[0])
        return a.T @ np.diag(w) @ a + np.diag(np.asarray(d) * np.exp(eta[1]))

    return metric, dense


@pytest.mark.parametrize("data_zero", [False, True])
def test_structured_solves_match_dense(data_zero):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        metric, dense = random_metric(rng, data_zero)
        eta = jnp.array([0.3, -0.4])
        g = dense(eta)
        r = jnp.asarray(rng.normal(size=N))
        logdet, x = param_logdet_and_solve(metric, eta, r)
        np.testing.assert_allclose(logdet, np.linalg.slogdet(g)[1], rtol=1e-12)
        np.testing.assert_allclose(x, np.linalg.solve(g, r), rtol=1e-10)
        np.testing.assert_allclose(param_diagonal(metric, eta), np.diag(g), rtol=1e-12)
        # ∂/∂η of ½log|G| + ½ rᵀG⁻¹r against finite differences of the dense form
        d_eta, x2 = coupling_energy_grad(metric, eta, r)
        np.testing.assert_allclose(x2, x, rtol=1e-12)

        def dense_energy(e):
            ge = dense(e)
            return 0.5 * np.linalg.slogdet(ge)[1] + 0.5 * r @ np.linalg.solve(ge, r)

        h = 1e-6
        fd = [
            (dense_energy(eta + h * np.eye(2)[k]) - dense_energy(eta - h * np.eye(2)[k])) / (2 * h)
            for k in range(2)
        ]
        np.testing.assert_allclose(d_eta, fd, rtol=1e-6)
        np.testing.assert_allclose(
            coupling_energy(metric, eta, r), dense_energy(np.asarray(eta)), rtol=1e-12
        )


def test_momentum_covariance_is_the_metric():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        metric, dense = random_metric(rng)
        eta = jnp.array([0.1, 0.2])
        n = 200_000
        keys = jax.random.split(jax.random.PRNGKey(0), n)
        r, _ = jax.vmap(lambda k: sample_momentum(metric, k, eta, N))(keys)
        cov = np.cov(np.asarray(r).T)
        g = dense(eta)
        se = np.sqrt((np.outer(np.diag(g), np.diag(g)) + g**2) / n)
        assert np.all(np.abs(cov - g) < 5 * se), np.max(np.abs(cov - g) / se)


# --- integrators on a coupled metric -------------------------------------------

SIGMA = np.array([1.5, 1.0, 0.6, 2.0])
Y = np.array([1.0, -0.5, 2.0, 0.3])


def es_potential(theta, eta):
    """θ = (μ, θ₁..θ₄), η = log τ: μ ~ N(0, 2), θ_j ~ N(μ, τ), y_j ~ N(θ_j, σ_j), τ ~ LogNormal(0, 1)."""
    mu, th, tau = theta[0], theta[1:], jnp.exp(eta[0])
    u = 0.5 * mu**2 / 4.0 + 0.5 * jnp.sum((th - mu) ** 2) / tau**2 + th.size * eta[0]
    u = u + 0.5 * jnp.sum((Y - th) ** 2 / SIGMA**2)
    return u + 0.5 * eta[0] ** 2


def es_metric():
    coupling = LocationCoupling(np.array([0]), np.arange(1, 5), jnp.ones((4, 1)), jnp.zeros((1, 1)))
    prior = lambda eta: jnp.concatenate([jnp.full(1, 0.25), jnp.full(4, jnp.exp(-2 * eta[0]))])  # noqa: E731
    data = jnp.concatenate([jnp.zeros(1), 1 / SIGMA**2])
    return SemiSeparableMetric(prior, jnp.array([8.0]), data, coupling)


def es_state():
    theta, eta = jnp.array([0.4, 0.9, -0.3, 1.2, 0.1]), jnp.array([-0.2])
    u, (g_theta, g_eta) = jax.value_and_grad(es_potential, argnums=(0, 1))(theta, eta)
    return IntegratorState(
        theta, eta, jnp.array([0.5, -1.0, 0.2, 0.8, -0.4]), jnp.array([1.3]), u, g_theta, g_eta
    )


def es_run(name, state, step_size, num_steps):
    def potential_and_grad(theta, eta):
        u, (g_theta, g_eta) = jax.value_and_grad(es_potential, argnums=(0, 1))(theta, eta)
        return u, g_theta, g_eta

    kwargs = {"fixed_point_tol": 1e-14} if name == "implicit_alba" else {}
    step, _ = build_integrator(name, potential_and_grad, es_metric(), **kwargs)
    step = jax.jit(step)  # one compile instead of dispatching every operation eagerly
    for _ in range(num_steps):
        state, info = step(state, step_size)
        assert bool(info.ok)
    return state


def es_energy(state):
    return hamiltonian(es_metric(), state.potential_energy, state.eta, state.r_theta, state.r_eta)


@pytest.mark.parametrize("name", INTEGRATORS)
def test_coupled_integrators_reversible_and_volume_preserving(name):
    with jax.enable_x64(True):
        start = es_state()
        end = es_run(name, start, 0.1, 15)
        back = es_run(name, end._replace(r_theta=-end.r_theta, r_eta=-end.r_eta), 0.1, 15)
        np.testing.assert_allclose(back.theta, start.theta, atol=1e-11)
        np.testing.assert_allclose(back.eta, start.eta, atol=1e-11)
        np.testing.assert_allclose(-back.r_theta, start.r_theta, atol=1e-11)
        assert np.abs(np.asarray(end.theta - start.theta)).max() > 0.1

        def flow(x):
            s = es_state()
            s = s._replace(theta=x[:5], eta=x[5:6], r_theta=x[6:11], r_eta=x[11:])
            u, (g_theta, g_eta) = jax.value_and_grad(es_potential, argnums=(0, 1))(s.theta, s.eta)
            s = es_run(
                name, s._replace(potential_energy=u, grad_theta=g_theta, grad_eta=g_eta), 0.1, 5
            )
            return jnp.concatenate([s.theta, s.eta, s.r_theta, s.r_eta])

        s = es_state()
        x0 = jnp.concatenate([s.theta, s.eta, s.r_theta, s.r_eta])
        det = np.linalg.det(np.asarray(jax.jacfwd(flow)(x0)))
        assert abs(det - 1.0) < 1e-9, det


@pytest.mark.parametrize("name", INTEGRATORS)
def test_coupled_energy_error_is_second_order(name):
    with jax.enable_x64(True):
        errors = []
        for h in (0.04, 0.02):
            end = es_run(name, es_state(), h, int(round(0.4 / h)))
            errors.append(abs(float(es_energy(end) - es_energy(es_state()))))
        assert 3.0 < errors[0] / errors[1] < 5.5, errors


# --- the partition ---------------------------------------------------------------

Y8 = np.array([28.0, 8, -3, 7, -1, 1, 18, 12])
S8 = np.array([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools(sigma=S8, y=Y8):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", sigma.size):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


X_REG = np.random.default_rng(3).normal(size=(12, 3))


def group_regression():
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([3]))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    a = numpyro.sample("a", dist.Normal(X_REG @ beta, tau))
    numpyro.sample("y", dist.Normal(a, 0.5), obs=np.zeros(12))


def nonlinear_mean():
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    numpyro.sample("a", dist.Normal(jnp.tanh(beta), tau).expand([4]))


def test_partition_finds_location_parents_and_data_term():
    p = partition_sites(eight_schools)
    assert p.param_sites["theta"].location_parents == ("mu",)
    assert p.param_sites["mu"].location_of == ("theta",)
    assert "location parent of theta" in str(p) and "mean <- mu" in str(p)
    np.testing.assert_array_equal(p.coupling.parents, [0])  # mu sorts first
    np.testing.assert_array_equal(p.coupling.rows, np.arange(1, 9))
    np.testing.assert_allclose(p.coupling.b_rows, np.ones((8, 1)))
    np.testing.assert_array_equal(p.data_term.cols, np.arange(1, 9))

    p = partition_sites(group_regression)
    assert p.param_sites["a"].location_parents == ("beta",)
    np.testing.assert_allclose(p.coupling.b_rows, X_REG, rtol=1e-5)

    p = partition_sites(nonlinear_mean)  # tanh(β): no constant coefficient, no coupling
    assert p.coupling is None and p.param_sites["a"].location_parents == ()


@pytest.mark.parametrize("model", [eight_schools, group_regression])
def test_location_coefficients_site_by_site_as_at_once(model, monkeypatch):
    """Where one Jacobian of the means is too large, the partition takes them a site
    at a time: the same coupling and data term, to the bit."""
    import numpyro_s3hmc.partition as partition

    evaluate, blocks = partition._evaluate, []

    def spy(program, *args):
        out = evaluate(program, *args)
        if program.what == "locs" and isinstance(program.site, tuple):
            blocks.append((program.site, np.shape(out)))
        return out

    monkeypatch.setattr(partition, "_evaluate", spy)
    whole = partition_sites(model)
    [((offset, size), (rows, _))] = blocks  # one Jacobian over every site
    assert offset == 0
    blocks.clear()
    monkeypatch.setattr(partition, "MAX_JACOBIAN", rows * size - 1)
    by_site = partition_sites(model)
    assert len(blocks) > 1 and all(s < size for (_, s), _ in blocks)
    for name in LocationCoupling._fields:
        np.testing.assert_array_equal(
            getattr(by_site.coupling, name), getattr(whole.coupling, name), err_msg=name
        )
    for name in ("obs", "cols", "b2"):
        np.testing.assert_array_equal(
            getattr(by_site.data_term, name), getattr(whole.data_term, name), err_msg=name
        )


# --- exactness -------------------------------------------------------------------


def located_funnel():
    mu = numpyro.sample("mu", dist.Normal(1.0, 2.0))
    tau = numpyro.sample("tau", dist.HalfNormal(2.0))
    numpyro.sample("theta", dist.Normal(mu, tau).expand([10]))


def test_prior_only_funnel_with_location_parent_is_exact():
    kernel = S3HMC(located_funnel, coordinates="centred")  # the coupled metric's test
    mcmc = MCMC(kernel, num_warmup=500, num_samples=2000, num_chains=2, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    assert kernel.partition.coupling is not None
    s = mcmc.get_samples(group_by_chain=True)
    euler = 0.5772156649015329
    assert_mean(np.log(s["tau"]), np.log(2.0) - 0.5 * (euler + np.log(2.0)), "log tau")
    assert_mean(s["mu"], 1.0, "mu")
    assert_mean(s["theta"][..., 3], 1.0, "theta[3]")
    assert_mean(s["theta"][..., 3] ** 2, 1.0 + 4.0 + 4.0, "theta[3]^2")


def eight_schools_tau_posterior():
    """p(τ | y) on a grid, θ and μ integrated out exactly: y | τ ~ N(0, diag(σ² + τ²) + 25·11ᵀ)."""
    tau = np.concatenate([np.geomspace(1e-4, 1.0, 4000)[:-1], np.linspace(1.0, 400.0, 40000)])
    log_post = np.empty_like(tau)
    for i, t in enumerate(tau):
        cov = np.diag(S8**2 + t**2) + 25.0
        _, logdet = np.linalg.slogdet(cov)
        log_post[i] = -0.5 * logdet - 0.5 * Y8 @ np.linalg.solve(cov, Y8) - np.log1p((t / 5.0) ** 2)
    dens = np.exp(log_post - log_post.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(tau))])
    cdf /= cdf[-1]
    mean = np.sum(0.5 * (dens[1:] * tau[1:] + dens[:-1] * tau[:-1]) * np.diff(tau))
    mean /= np.sum(0.5 * (dens[1:] + dens[:-1]) * np.diff(tau))
    mean_log = np.sum(
        0.5 * (dens[1:] * np.log(tau[1:]) + dens[:-1] * np.log(tau[:-1])) * np.diff(tau)
    ) / np.sum(0.5 * (dens[1:] + dens[:-1]) * np.diff(tau))
    return mean, mean_log, np.interp(0.05, cdf, tau)


def run_eight_schools(num_samples, seed, coordinates="centred"):
    mcmc = MCMC(
        S3HMC(eight_schools, coordinates=coordinates),
        num_warmup=1000,
        num_samples=num_samples,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",))
    return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields()["diverging"]


def check_eight_schools(samples, diverging):
    from numpyro_s3hmc._arviz import arviz

    mean, mean_log, q05 = eight_schools_tau_posterior()
    tau = np.asarray(samples["tau"])
    assert_mean(tau, mean, "tau")
    assert_mean(np.log(tau), mean_log, "log tau")
    assert_mean((tau < q05).astype(float), 0.05, "P(tau < q05)")
    for name, v in samples.items():
        v = np.asarray(v).reshape(v.shape[0], v.shape[1], -1)
        rhat = max(float(arviz().rhat(v[..., i])) for i in range(v.shape[-1]))
        assert rhat < 1.01, (name, rhat)
    assert np.mean(diverging) < 0.005


def test_eight_schools_centred_is_exact():
    check_eight_schools(*run_eight_schools(2500, 0))


@pytest.mark.slow
@pytest.mark.parametrize("coordinates", ["centred", "auto"])
def test_eight_schools_centred_is_exact_long(coordinates):
    # the model written centred; "auto" (the default) samples it non-centred
    check_eight_schools(*run_eight_schools(10_000, 1, coordinates))


# --- coordinates ---------------------------------------------------------------------


def test_noncentred_coordinates_are_exact_and_keep_the_user_names(capsys):
    kernel = S3HMC(located_funnel, coordinates="noncentred")
    mcmc = MCMC(kernel, num_warmup=500, num_samples=2000, num_chains=2, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1))
    assert kernel.partition.params == ("mu", "tau", "theta_decentered")
    assert kernel.partition.hyper == ()  # tau scales nothing once theta is non-centred
    s = mcmc.get_samples(group_by_chain=True)
    assert s["theta"].shape == (2, 2000, 10)  # the user's site, as a deterministic one
    assert "theta_decentered" not in s  # the kernel's coordinates stay in its state
    # NumPyro's print_summary keeps the sites named in the state: the user's, theta too
    assert mcmc.last_state.z.keys() == {"mu", "tau", "theta"}
    mcmc.print_summary()
    assert "theta[9]" in capsys.readouterr().out
    euler = 0.5772156649015329
    assert_mean(np.log(s["tau"]), np.log(2.0) - 0.5 * (euler + np.log(2.0)), "log tau")
    assert_mean(s["theta"][..., 3], 1.0, "theta[3]")
    assert_mean(s["theta"][..., 3] ** 2, 1.0 + 4.0 + 4.0, "theta[3]^2")


def ring():
    # non-centred, theta_decentered = theta / sigma lies near the unit circle in each
    # pair: the chains travel around a thin ring, so each coordinate's variance is
    # about 1/2 while its mean squared gradient is in the thousands (F v >> 1)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    theta = numpyro.sample("theta", dist.Normal(0.0, sigma).expand([3, 2]))
    numpyro.sample("y", dist.Normal(jnp.sum((theta / sigma) ** 2, -1), 0.05), obs=jnp.ones(3))


@pytest.mark.parametrize("model, spread", [(located_funnel, False), (ring, True)])
def test_free_sites_metric_by_their_spread(model, spread):
    """The θ elements free of η (a non-centred site, an ungoverned one) take the inverse
    Welford variance as their metric, as NUTS's mass after LocScaleReparam(0), where the
    median over them of F v (mean squared gradient times variance, 1 for a Gaussian)
    exceeds SPREAD; else a non-centred site keeps its prior precision (1) scaled to F."""
    from numpyro_s3hmc.adaptation import SPREAD

    kernel = S3HMC(model, coordinates="noncentred")
    mcmc = MCMC(kernel, num_warmup=400, num_samples=2000, num_chains=2, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    state = jax.tree.map(lambda x: x[0], mcmc.last_state)  # the first chain's
    partition = kernel.partition
    theta = partition.site_mask(("theta_decentered",))
    var = np.asarray(state.adapt_state.inverse_mass_matrix)[: theta.size]
    scale = np.asarray(state.metric_state.prior_scale)
    if spread:
        np.testing.assert_allclose(scale[theta], 1.0 / var[theta], rtol=1e-5)
        assert np.all(var[theta] > 0.1)  # the chains went around the ring
        # sigma, a positive site that scales nothing once theta is non-centred, too
        sigma = partition.site_mask(("sigma",))
        data = np.asarray(state.metric_state.data_precision)
        np.testing.assert_allclose(data[sigma], 1.0 / var[sigma], rtol=1e-5)
        # and the sampler stays exact under that metric: the data constrain theta /
        # sigma only, so sigma's posterior is its HalfNormal(1) prior
        draws = np.asarray(mcmc.get_samples(group_by_chain=True)["sigma"])
        assert_mean(draws, np.sqrt(2.0 / np.pi), "E[sigma]")
        assert_mean(draws**2, 1.0, "E[sigma^2]")
    else:
        # F (less its noise margin) times v: near 1, as for a Gaussian
        assert np.median(scale[theta] * var[theta]) < SPREAD / 5
        assert np.all(scale[theta] >= 1.0)


def test_unknown_coordinates_is_an_error():
    with pytest.raises(ValueError, match="coordinates must be one of"):
        S3HMC(located_funnel, coordinates="partial")


def data_dominated(y=np.array([3.0, -1.0, 0.5, 2.0, -2.5, 1.5])):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfNormal(5.0))
    with numpyro.plate("J", y.size):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        # 400 unit-noise observations per group, as their mean: precision 400
        numpyro.sample("y", dist.Normal(theta, 0.05), obs=y)


@pytest.mark.parametrize(
    "model, expected, chain_method",
    [
        (located_funnel, "noncentred", "sequential"),  # one decision for both chains
        (data_dominated, "centred", "vectorized"),
        # under pmap the pilot runs at trace time (conftest makes two host devices)
        (located_funnel, "noncentred", "parallel"),
    ],
)
def test_auto_coordinates_follow_the_data(model, expected, chain_method):
    kernel = S3HMC(model, coordinates="auto")
    mcmc = MCMC(
        kernel,
        # a pilot of 75 iterations (50 with 200 warmup left the pilot's statistic of a
        # prior-only group at 0.44-0.78 against its 0.5 cut, by JAX release)
        num_warmup=300,
        num_samples=200,
        num_chains=2,
        chain_method=chain_method,
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(2))
    assert kernel.coordinates == {"theta": expected}
    s = mcmc.get_samples(group_by_chain=True)
    assert s["theta"].shape[:2] == (2, 200) and np.isfinite(s["theta"]).all()
    if expected == "centred":
        # the data pin each theta_j near y_j
        np.testing.assert_allclose(
            s["theta"].mean((0, 1)), data_dominated.__defaults__[0], atol=0.05
        )


def test_sites_near_the_cut_are_decided_together():
    def v(x):  # one site's pilot variances
        return np.full(8, x)

    # alone, a site is non-centred above the cut at 1/2
    assert noncentred_by_statistic({"a": v(0.49)}) == ()
    assert noncentred_by_statistic({"a": v(0.51)}) == ("a",)
    # near the cut (0.3-0.75) on opposite sides: the median of all their elements decides
    assert noncentred_by_statistic({"a": v(0.45), "b": v(0.65)}) == ("a", "b")
    assert noncentred_by_statistic({"a": v(0.35), "b": v(0.55)}) == ()
    # outside the band each site keeps its own side
    assert noncentred_by_statistic({"a": v(0.2), "b": v(0.65)}) == ("b",)
    assert noncentred_by_statistic({"a": v(0.45), "b": v(0.9)}) == ("b",)
    assert noncentred_by_statistic({"a": v(0.45), "b": v(0.72)}) == ("a", "b")


def test_a_site_of_few_values_takes_the_coordinates_beside_it():
    # one element, one pilot chain (a BNN's output bias): its statistic is too noisy to
    # place it by itself (0.15-1.19 over 20 keys on the BNN sine), wherever it reads
    layers, one = np.full(50, 0.9), np.array
    assert noncentred_by_statistic({"w": layers, "b": one([0.2])}) == ("w", "b")
    assert noncentred_by_statistic({"w": np.full(50, 0.1), "b": one([0.9])}) == ()
    # beside a site near the cut it is decided with that site: both take its side
    near = {"w1": np.full(160, 0.95), "w2": np.full(16, 0.45)}
    assert noncentred_by_statistic({**near, "b": one([0.9])}) == ("w1",)
    near["w2"] = np.full(16, 0.55)
    assert noncentred_by_statistic({**near, "b": one([0.2])}) == ("w1", "w2", "b")
    # alone, or with enough values (elements x pilot chains), the cut decides as before
    assert noncentred_by_statistic({"b": one([0.2])}) == ()
    assert noncentred_by_statistic({"w": layers, "b": np.full(8, 0.2)}) == ("w",)
    assert noncentred_by_statistic({"w": layers, "b": np.full((4, 2), 0.45)}) == ("w",)


def test_demo_groups_get_the_same_coordinates():
    # the demo's intercepts and slopes: their pilot statistics straddle 1/2 on most
    # keys (0.43-0.55 and 0.64-0.73), and mixed coordinates sampled 7-12x slower
    from numpyro_s3hmc import demo

    x, group, num_groups, y = demo.load_data()
    kernel = S3HMC(demo.model)
    kernel.init(
        jax.random.PRNGKey(0), 1000, model_args=(x, group, num_groups), model_kwargs={"y": y}
    )
    assert set(kernel.coordinates) == {"alpha", "beta"}
    assert len(set(kernel.coordinates.values())) == 1, kernel.coordinates_pilot


def test_a_site_already_named_like_a_decentred_one_stays_centred():
    # non-centring theta would add a second site "theta_decentered": it stays a candidate
    # no longer, and the default runs the model as NUTS does (it crashed at init)
    def model():
        tau = numpyro.sample("tau", dist.Gamma(2.0, 1.0))
        theta = numpyro.sample("theta", dist.Normal(0.0, 1 / jnp.sqrt(tau)).expand([4]))
        z = numpyro.sample("theta_decentered", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(theta + z, 1.0), obs=jnp.ones(4))

    kernel = S3HMC(model, coordinates="noncentred")
    mcmc = MCMC(kernel, num_warmup=20, num_samples=20, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0))
    assert kernel.coordinates == {} and "theta_decentered" in mcmc.get_samples()


def test_init_params_in_user_coordinates_are_converted():
    z = {"mu": jnp.array(0.5), "tau": jnp.log(jnp.array(2.0)), "theta": jnp.full(10, 1.5)}
    kernel = S3HMC(located_funnel, coordinates="noncentred")
    state = kernel.init(jax.random.PRNGKey(0), 10, init_params=z)
    # the state keeps the non-centred value under the user's name
    np.testing.assert_allclose(state.z["theta"], np.full(10, 0.5), rtol=1e-6)
    assert kernel.model_z(state.z).keys() == {"mu", "tau", "theta_decentered"}


# a Gaussian process with a fixed kernel and Normal noise: the posterior is Gaussian
GP_X = np.linspace(0.0, 4.0, 5)
GP_K = np.exp(-0.5 * (GP_X[:, None] - GP_X[None]) ** 2) + 1e-2 * np.eye(5)
GP_Y = np.array([0.5, 1.0, -0.3, 0.2, 1.5])


def gp(noise):
    def model():
        f = numpyro.sample("f", dist.MultivariateNormal(jnp.full(5, 0.3), GP_K))
        numpyro.sample("y", dist.Normal(f, noise), obs=GP_Y)

    return model


def test_auto_coordinates_whiten_a_multivariate_normal_exactly(noise=3.0):
    # weak data: the pilot whitens f (f = loc + L z, z ~ N(0, I))
    kernel = S3HMC(gp(noise))
    mcmc = MCMC(kernel, num_warmup=500, num_samples=2000, num_chains=2, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(3))
    assert kernel.coordinates == {"f": "noncentred"}
    s = mcmc.get_samples(group_by_chain=True)
    assert "f_decentered" not in s
    precision = np.linalg.inv(GP_K) + np.eye(5) / noise**2
    cov = np.linalg.inv(precision)
    mean = cov @ (np.linalg.solve(GP_K, np.full(5, 0.3)) + GP_Y / noise**2)
    for i in (0, 2, 4):
        assert_mean(s["f"][..., i], mean[i], f"f[{i}]")
        assert_mean((s["f"][..., i] - mean[i]) ** 2, cov[i, i], f"var f[{i}]")


def test_standardise_whitens_a_multivariate_normal():
    from numpyro_s3hmc.partition import standardise

    value = np.array([1.0, -0.5, 0.2, 0.8, 2.0])
    white = standardise(gp(1.0), (), {}, {"f": jnp.asarray(value)}, ("f",))["f"]
    expected = np.linalg.solve(np.linalg.cholesky(GP_K), value - 0.3)
    np.testing.assert_allclose(white, expected, rtol=1e-5, atol=1e-5)
