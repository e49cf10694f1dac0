"""Native kernels: ``_cd1``, the sparse RBM's CD-1 epoch on x86-64 CPUs (a C extension).

Optional: where it was not built, ``deepbof_tf.layers.SparseRBMTrainer`` trains on its
TensorFlow path. What it is, why it exists, how it is tested and how to turn it off:
``README.md`` here and docs/native-kernel.md.
"""
