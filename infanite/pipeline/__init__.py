"""The whole method end to end: ``infanite run`` (register → train → atlas → evaluate → report) and the demo."""
