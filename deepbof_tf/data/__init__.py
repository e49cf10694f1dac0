"""Datasets: the TFRecord schema and readers, dataset manifests, bag-of-features files."""
