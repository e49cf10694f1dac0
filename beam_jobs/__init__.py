"""Apache Beam pipelines of deepbof: a library module and a thin absl entry point each."""
