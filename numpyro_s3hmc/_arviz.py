"""One code path for ArviZ 0.x (InferenceData) and 1.x (xarray DataTree).

What differs between the two, and what this module smooths over:

- ``az.from_numpyro`` returns an ``InferenceData`` (0.x) or a ``DataTree`` (1.x,
  from ``arviz_base``). In both, ``idata.posterior`` is the posterior group, but in
  1.x it is a DataTree node: :func:`dataset` turns either into an
  ``xarray.Dataset``, which ``az.ess``, ``az.rhat`` and ``az.mcse`` of both
  versions accept.
- 1.x writes the ``log_likelihood`` group only when asked
  (``log_likelihood=True``, which 0.x accepts too): :func:`from_numpyro` asks, so
  ``az.loo`` works on what this package returns with either version.
- ArviZ 1.x stores a run as a DataTree, whose variable names may not contain
  ``/``, and flax modules name their sites ``net/Dense_0.kernel``: with 1.x,
  :func:`from_numpyro` writes those sites as ``net.Dense_0.kernel`` (the model is
  read through the same renaming, so ``log_likelihood`` still conditions on them).
  With 0.x it renames the variables and dimensions of the finished InferenceData the
  same way, so that ``to_netcdf`` can write it (netCDF refuses ``/`` in names too).
- Importing ArviZ 0.23 prints a ``FutureWarning`` about the 1.x refactor; it says
  nothing a user of this package can act on, so :func:`arviz` imports it quietly.
"""

import warnings
from functools import cache

__all__ = ["arviz", "dataset", "datatree_name", "from_numpyro", "group_names", "is_arviz_1"]


@cache
def arviz():
    """The ``arviz`` module, imported without 0.23's refactor announcement."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


def is_arviz_1() -> bool:
    return int(arviz().__version__.split(".")[0]) >= 1


def from_numpyro(mcmc, **kwargs):
    """``az.from_numpyro(mcmc, log_likelihood=True, **kwargs)``, for either version, with
    ``/`` in site names (flax's ``net/Dense_0.kernel``) written as ``.``: ArviZ 1.x
    refuses such names, and netCDF (``to_netcdf``) too."""
    kwargs.setdefault("log_likelihood", True)
    slashes = any(SLASH in name for name in mcmc.get_samples())
    if is_arviz_1() and slashes:
        mcmc = _without_slashes(mcmc)
    idata = arviz().from_numpyro(mcmc, **kwargs)
    if slashes and not is_arviz_1():
        names = set()
        for group in group_names(idata):
            ds = getattr(idata, group)
            names |= {n for n in (*ds.data_vars, *ds.dims) if SLASH in str(n)}
        idata = idata.rename({n: datatree_name(n) for n in names})
    return idata


SLASH, SLASH_FREE = "/", "."


def datatree_name(site: str) -> str:
    """The name ArviZ 1.x gets for a site (``net/Dense_0.kernel`` -> ``net.Dense_0.kernel``)."""
    return site.replace(SLASH, SLASH_FREE)


def _without_slashes(mcmc):
    """ArviZ 1.x's MCMC adapter with every site renamed by :func:`datatree_name`, in
    the draws and in the model it replays for dims and the log-likelihood."""
    from arviz_base.io_numpyro import MCMCAdapter

    from numpyro.primitives import Messenger

    class RenameSites(Messenger):
        def process_message(self, msg):
            if msg["type"] in ("sample", "deterministic") and SLASH in msg["name"]:
                msg["name"] = datatree_name(msg["name"])

    class Adapter(MCMCAdapter):
        def get_samples(self, seed=None, **kwargs):
            draws = super().get_samples(seed, **kwargs)
            return {datatree_name(name): value for name, value in draws.items()}

    adapter = Adapter(mcmc)
    adapter.model = RenameSites(adapter.model)
    return adapter


def dataset(group):
    """An ``xarray.Dataset`` of an InferenceData group (0.x) or DataTree node (1.x)."""
    to_dataset = getattr(group, "to_dataset", None)
    return group if to_dataset is None else to_dataset()


def group_names(idata) -> list[str]:
    """The groups of a run (``posterior``, ``sample_stats``, ...), in either version."""
    groups = idata.groups
    if callable(groups):  # InferenceData.groups()
        return list(groups())
    return [g.strip("/") for g in groups if g.strip("/")]  # DataTree paths, "/" the root
