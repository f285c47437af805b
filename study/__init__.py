"""One trial (model, data, training loop, metrics) and many trials (Ray Tune)."""
