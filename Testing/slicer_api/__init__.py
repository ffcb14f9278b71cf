"""What 3D Slicer 5.8.1 / 5.10.0 expose to Python (``index/*.json``, made by ``generate_index.py``) and a static
checker of the extension's calls against it (``checker.py``).  See ``README.md``."""
