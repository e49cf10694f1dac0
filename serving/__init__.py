"""SavedModel export, TF Serving assets, the serving client and the ``deepbof-tag`` CLI."""
