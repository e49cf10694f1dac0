"""Training loops of the song-level model: RBM pretraining, fine-tuning, the logistic-regression head."""
