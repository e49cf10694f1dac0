"""Serializable Keras layers of the Deep Bag-of-Features model."""
