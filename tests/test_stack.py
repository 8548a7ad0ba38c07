"""The installed stack is one pyproject.toml admits, what the kernel takes from
NumPyro's undocumented ``hmc_util`` is there, and the core import stays light."""

import importlib.metadata
import subprocess
import sys

from packaging.requirements import Requirement

import numpyro.infer.hmc_util as hmc_util


def test_installed_versions_are_within_the_pins():
    """CI runs the oldest admitted releases (Python 3.11) and the newest (3.12):
    each environment must be one the pins allow, or the pins say nothing."""
    pinned = [Requirement(r) for r in importlib.metadata.requires("numpyro-s3hmc") or []]
    checked = []
    for req in pinned:
        if req.marker is not None:  # extras (test) and environment markers
            continue
        version = importlib.metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (
            f"{req.name} {version} not in {req}"
        )
        checked.append(req.name)
    assert {"numpyro", "jax", "jaxlib", "arviz", "flax"} <= set(checked)


def test_numpyro_hmc_util_has_what_the_kernel_uses():
    """numpyro_s3hmc.adaptation builds on these; a NumPyro release that moves them
    must fail here, not in a user's warmup."""
    for name in ("warmup_adapter", "build_adaptation_schedule", "dual_averaging", "HMCAdaptState"):
        assert hasattr(hmc_util, name), name
    wa_init, wa_update = hmc_util.warmup_adapter(
        10, adapt_step_size=True, adapt_mass_matrix=True, dense_mass=False
    )
    assert callable(wa_init) and callable(wa_update)
    for field in ("step_size", "inverse_mass_matrix", "ss_state", "window_idx", "rng_key"):
        assert field in hmc_util.HMCAdaptState._fields, field
    assert len(hmc_util.build_adaptation_schedule(1000)) > 2


def test_core_import_leaves_reporting_and_plotting_unloaded():
    code = (
        "import sys, numpyro_s3hmc\n"
        "print(sorted(m for m in ('pandas', 'matplotlib', 'arviz', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    # and the lazy names still resolve
    import numpyro_s3hmc

    assert numpyro_s3hmc.compare_samplers.__module__ == "numpyro_s3hmc.compare"


def test_docstrings_cite_sections_the_design_note_has():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    headings = set(
        re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", (root / "docs/design.md").read_text(), re.M)
    )
    cited = set()
    for path in [*root.glob("numpyro_s3hmc/*.py"), *root.glob("tests/*.py")]:
        for match in re.finditer(
            r"docs/design\.md §(\d+(?:\.\d+)?)(?:[–-](\d+))?", path.read_text()
        ):
            cited |= {g for g in match.groups() if g}
    assert cited, "no citation found: the pattern is stale"
    assert cited <= headings, f"cited but missing in docs/design.md: {sorted(cited - headings)}"
    assert not any("DESIGN.md" in p.read_text() for p in root.glob("numpyro_s3hmc/*.py"))
