"""Interactive explorers for JupyterLab (every lab has one, next to a static figure).

An explorer redraws a figure from a function of a few controls. On the static site and under
papermill the widget has no live kernel, so ``labkit run`` builds none (``LABKIT_WIDGETS=off``)
and the lab shows a static figure made by the same function; ``explorer`` returns ``None`` when ipywidgets is
missing so that a lab never fails because of it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

__all__ = ["explorer"]


def _kind(name: str, spec: Any) -> str:
    """What a control spec builds: "widget", "int slider", "float slider", "dropdown" or "checkbox"
    (a bad spec raises ``ValueError`` naming the control)."""
    if type(spec).__module__.startswith("ipywidgets") and hasattr(spec, "value"):
        return "widget"
    # Only a *tuple* of three numbers is a slider: a list such as [0.1, 0.01, 0.001] is a set of
    # options (a dropdown), as the docstring of ``explorer`` says.
    if (isinstance(spec, tuple) and len(spec) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec)):
        lo, hi, step = spec
        if not (lo < hi and step > 0):
            raise ValueError(f"control {name!r}: a slider (min, max, step) needs min < max and step > 0, got {spec!r}")
        return "int slider" if all(isinstance(v, int) for v in spec) else "float slider"
    if isinstance(spec, (list, tuple)) and spec:
        return "dropdown"
    if isinstance(spec, bool):
        return "checkbox"
    raise ValueError(
        f"control {name!r}: give a (min, max, step) tuple, a list of options, a bool or an ipywidget, got {spec!r}"
    )


def _control(name: str, spec: Any) -> Any:
    import ipywidgets as w

    kind = _kind(name, spec)
    if kind == "widget":
        return spec
    if kind.endswith("slider"):
        lo, hi, step = spec
        cls = w.IntSlider if kind == "int slider" else w.FloatSlider
        return cls(min=lo, max=hi, step=step, value=lo, description=name, continuous_update=False)
    if kind == "dropdown":
        return w.Dropdown(options=list(spec), value=list(spec)[0], description=name)
    return w.Checkbox(value=spec, description=name)


def explorer(draw: Callable[..., Any], **controls: Sequence[Any] | bool | Any) -> Any:
    """Build an interactive view: ``draw(**values)`` returns a matplotlib Figure for the controls' values.

    Controls: a ``(min, max, step)`` tuple -> slider, a list -> dropdown, a bool -> checkbox, or a widget.
    Returns the ``ipywidgets.VBox`` (display it as the cell's last expression), or ``None``
    when ipywidgets is not installed. Used in every lab.

    With ``LABKIT_WIDGETS=off`` in the environment (set by ``labkit run``, ``labkit grade`` and the
    notebook tests) the controls are checked and nothing is built or drawn: a run without a live
    frontend has no use for a widget, the lab shows the same function's static figure anyway, and
    widget messages can leave nbclient waiting forever for a cell that has finished (jupyter/nbclient
    issue 312; seen once here, in lab 10's explorer, under papermill on a loaded machine).
    """
    if not callable(draw):
        raise TypeError(f"draw must be a function returning a Figure, got {type(draw).__name__}")
    if os.environ.get("LABKIT_WIDGETS", "on") == "off":
        for name, spec in controls.items():
            _kind(name, spec)
        return None
    try:
        import ipywidgets as w
    except ImportError:  # pragma: no cover - ipywidgets is a dependency, but stay usable without it
        return None
    from IPython.display import display

    from .plotting import close_figure

    widgets = {name: _control(name, spec) for name, spec in controls.items()}
    out = w.Output()

    def refresh(_change: Any = None) -> None:
        with out:
            out.clear_output(wait=True)
            fig = draw(**{k: v.value for k, v in widgets.items()})
            if fig is not None:
                display(fig)
                close_figure(fig)

    for widget in widgets.values():
        widget.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox(list(widgets.values())), out])
