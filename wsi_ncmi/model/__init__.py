"""Models: frozen tile encoders, the attention-MIL aggregator, bags of features, losses,
prediction heads, the training loop."""
