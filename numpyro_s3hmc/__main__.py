"""``python -m numpyro_s3hmc``: run the S3HMC-against-NUTS demo (``--help`` for the flags)."""

from numpyro_s3hmc.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
