"""Atlas quality: metrics, comparison with a reference, subject consistency, baselines."""
