"""INFANiTE core: thick-slice fetal MRI → spatio-temporal atlas (no Slicer import anywhere in this package)."""

__version__ = "0.1.0"
