from __future__ import annotations

import vtk


class ParameterNodeWidgetMixin:
    def f(self, x: int | None) -> dict[str, int] | None:
        return None
