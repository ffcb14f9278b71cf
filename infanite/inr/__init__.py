"""The implicit neural representation: model, packed training data, training loop, config."""
