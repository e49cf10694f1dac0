"""Serializable Keras layers of the Deep Bag-of-Features model."""

# Local features and bag-of-features.
from deepbof_tf.layers.bag_of_features import BagOfFeaturesEncoder  # noqa: E402,F401
from deepbof_tf.layers.bag_of_features import BagOfFeaturesPooling  # noqa: E402,F401
from deepbof_tf.layers.bag_of_features import BlockExtraction  # noqa: E402,F401
from deepbof_tf.layers.dropout import ReplicaDropout  # noqa: E402,F401
from deepbof_tf.layers.pca import PCAWhitening  # noqa: E402,F401
from deepbof_tf.layers.sparse_rbm import SparseRBM  # noqa: E402,F401

# Song-level DNN.
from deepbof_tf.layers.relu_rbm import ReLURBM  # noqa: E402,F401
from deepbof_tf.layers.standardize import Standardization  # noqa: E402,F401
