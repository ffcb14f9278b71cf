"""Slicer-side helpers shared by the three INFANiTE modules (MRML nodes ↔ core volumes, colour tables,
background processes, dependency installation).

Nothing here imports Qt: every function takes scene/node objects and plain values, so it runs in desktop Slicer
and in the tests against PyPI's ``slicer-core``.  Heavy packages are imported inside functions, never at import.
"""
