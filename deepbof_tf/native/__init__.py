"""Native kernels for x86-64 CPUs.

* ``_cd1``: the sparse RBM's CD-1 epoch (a C extension). Optional: where it was not
  built, ``deepbof_tf.training.sparse_rbm_trainer.SparseRBMTrainer`` trains on its
  TensorFlow path (``deepbof_tf.training.cd1_backend`` chooses). What it is, why it
  exists, how it is tested and how to turn it off: ``README.md`` here and
  docs/native-kernel.md.
* ``frontend_op``: ``DeepbofLogMel``, the fused front end of ``deepbof-export
  --fused_frontend`` (a TensorFlow custom op compiled on first use); see that module and
  serving/README.md#fused-front-end.
* ``build``: how both are built (setup.py takes ``_cd1``'s sources and flags from it; it
  compiles the op) and the strict mode of CI (``CI=true`` / ``DEEPBOF_REQUIRE_NATIVE=1``)
  in which a kernel that should build but does not is an error; ``README.md`` here.
"""
