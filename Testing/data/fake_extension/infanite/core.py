import torch


def f(x: 'int | None' = None):
    return x
