"""Atlas generation from a trained run: kernel regression, prediction, labels, outputs."""
