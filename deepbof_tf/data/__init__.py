"""Datasets: the TFRecord schema and readers, dataset manifests, the demo corpus."""
