"""Thick-slice stack simulation with exact ground truth."""
