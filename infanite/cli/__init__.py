"""The command line (``python -m infanite``): all argparse lives here."""
