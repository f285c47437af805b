"""Named search spaces as plain data, and the one converter to Ray Tune domains."""
