"""benchmarks/bnn_scale.py: the sizes it claims, a quick run's numbers, its report section."""

import importlib.util
import math
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bnn_scale():
    spec = importlib.util.spec_from_file_location("bnn_scale", BENCHMARKS / "bnn_scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnn_scale"] = module  # flax's dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bnn_scale"]


def test_sizes_span_the_range_and_lenet_is_the_papers(bnn_scale):
    from numpyro_s3hmc.bnn import param_names

    counts = {}
    for name, (arch, hidden, image) in bnn_scale.SIZES.items():
        shapes = param_names(bnn_scale.build_module(arch, hidden), (1, *image))
        counts[name] = sum(math.prod(s) for s in shapes.values())
    assert counts["lenet-431k"] == 431_080  # the S3HMC paper's network
    assert min(counts.values()) < 2_000 and max(counts.values()) > 400_000
    assert list(bnn_scale.QUICK) == sorted(counts, key=counts.get)[:2]


def test_quick_run_gives_finite_positive_numbers(bnn_scale, tmp_path, capsys):
    # one size, in a process of its own: about 60 s on 2 cores, most of it compiling
    rows = bnn_scale.main(["--quick", "--sizes", "mlp-1k", "--json", str(tmp_path / "rows.json")])
    assert [(r["network"], r.get("throughput", False)) for r in rows] == [("mlp-1k", False)]
    (r,) = rows
    assert r["θ"] > 0 and r["η"] == 4  # a precision for the kernel and bias of 2 layers
    numbers = [
        r["gradient (s)"],
        r["splitting step / gradients"],
        r["S3HMC in-run s/grad"],
        r["transition buffers (MB)"],
        r["peak RSS (MB)"],
        *(run["compile (s)"] for run in r["S3HMC runs"]),
    ]
    if r["NUTS"] is not None:
        numbers += [r["NUTS"]["s/grad"], r["NUTS"]["grads/draw"]]
    assert all(math.isfinite(v) and v > 0 for v in numbers), r
    out = capsys.readouterr().out
    assert "| mlp-1k | 1,210 | 4 |" in out and "n/a" not in out


@pytest.mark.slow
def test_quick_throughput_run_samples_the_digits(bnn_scale, tmp_path, capsys):
    # the throughput path alone ("--sizes" with no name): about 45 s on 2 cores
    argv = ["--quick", "--sizes", "--throughput", "mlp-1k"]
    rows = bnn_scale.main([*argv, "--json", str(tmp_path / "rows.json")])
    assert [(r["network"], r.get("throughput", False)) for r in rows] == [("mlp-1k", True)]
    (run,) = rows  # sampled the digits as a user would, from a MAP start
    assert run["θ"] == 1_210 and run["N train"] == 1258 and run["draws"] == 4
    for key in ("draws/s", "grads/draw", "s/grad", "compile (s)", "MAP (s)"):
        assert math.isfinite(run[key]) and run[key] > 0, key
    assert 0.1 <= run["test accuracy"] <= 1  # 0.1 by chance; the MAP start alone does better
    assert "| mlp-1k | 1,210 | 1258 |" in capsys.readouterr().out  # the throughput table


def test_section_is_written_once_and_replaced(bnn_scale, tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Benchmarks\n\nbefore\n")
    bnn_scale.write_results("first", path)
    bnn_scale.write_results("second", path)
    text = path.read_text()
    assert text.count(bnn_scale.HEADINGS["cpu"]) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Benchmarks\n\nbefore\n")
    bnn_scale.write_results("on a GPU", path, where="gpu")  # its own section, the CPU's kept
    text = path.read_text()
    assert text.count(bnn_scale.HEADINGS["gpu"]) == 1 and "second" in text and "on a GPU" in text
