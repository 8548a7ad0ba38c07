import os

import pandas as pd

from numpyro_s3hmc.demo import main


def test_demo_runs_and_writes_outputs(tmp_path):
    status = main(
        [
            "--num-warmup",
            "30",
            "--num-samples",
            "30",
            "--num-chains",
            "1",
            "--no-progress-bar",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert status == 0  # the console script does sys.exit(main())
    table = pd.read_csv(tmp_path / "comparison.csv", index_col="sampler")
    assert list(table.index) == ["S3HMC", "NUTS", "NUTS+reparam"]
    assert (table["ESS/1k grads"] > 0).all()
    for name in ("comparison.png", "comparison.csv", "s3hmc.nc", "nuts.nc", "nuts_reparam.nc"):
        assert os.path.getsize(tmp_path / name) > 0
