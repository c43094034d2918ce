"""lk.explorer: controls built from specs, draw called with their values, redraw on change."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from labkit.widgets import explorer  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


class Recorder:
    """A draw function that remembers its calls and returns a small figure."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **values):
        self.calls.append(values)
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.set_title(repr(values))
        return fig


def _controls(box: w.VBox) -> dict:
    hbox, out = box.children
    assert isinstance(hbox, w.HBox) and isinstance(out, w.Output)
    return {c.description: c for c in hbox.children}


def test_explorer_builds_the_right_controls_and_draws_once() -> None:
    draw = Recorder()
    box = explorer(draw, layer=["conv1", "conv2"], alpha=(0.0, 1.0, 0.1), k=(1, 9, 2), lr=[0.1, 0.01, 0.001],
                   smooth=True)
    assert isinstance(box, w.VBox)
    c = _controls(box)
    assert list(c) == ["layer", "alpha", "k", "lr", "smooth"]
    assert isinstance(c["layer"], w.Dropdown) and list(c["layer"].options) == ["conv1", "conv2"]
    assert isinstance(c["alpha"], w.FloatSlider)
    assert (c["alpha"].min, c["alpha"].max, c["alpha"].step) == (0.0, 1.0, 0.1)
    assert isinstance(c["k"], w.IntSlider) and (c["k"].min, c["k"].max, c["k"].step, c["k"].value) == (1, 9, 2, 1)
    assert not c["k"].continuous_update  # redraw on release, not while dragging
    # a list of three numbers is a set of options, not (min, max, step)
    assert isinstance(c["lr"], w.Dropdown) and list(c["lr"].options) == [0.1, 0.01, 0.001]
    assert isinstance(c["smooth"], w.Checkbox) and c["smooth"].value is True
    assert draw.calls == [{"layer": "conv1", "alpha": 0.0, "k": 1, "lr": 0.1, "smooth": True}]


def test_changing_a_control_redraws_with_the_new_values() -> None:
    draw = Recorder()
    box = explorer(draw, layer=["a", "b"], k=(1, 5, 1))
    c = _controls(box)
    c["layer"].value = "b"
    c["k"].value = 4
    assert draw.calls == [{"layer": "a", "k": 1}, {"layer": "b", "k": 1}, {"layer": "b", "k": 4}]
    c["k"].value = 4  # no change, no redraw
    assert len(draw.calls) == 3


def test_figures_are_closed_after_display() -> None:
    figs = []

    def draw(n):
        fig = plt.figure()
        figs.append(fig)
        return fig

    box = explorer(draw, n=(0, 3, 1))
    _controls(box)["n"].value = 2
    assert len(figs) == 2
    assert not any(plt.fignum_exists(f.number) for f in figs)


def test_draw_may_return_none() -> None:
    seen = []
    box = explorer(lambda flag: seen.append(flag), flag=False)
    _controls(box)["flag"].value = True
    assert seen == [False, True]


def test_a_ready_made_widget_is_used_as_is() -> None:
    slider = w.IntSlider(value=3, min=0, max=10, description="custom")
    draw = Recorder()
    box = explorer(draw, n=slider)
    assert _controls(box)["custom"] is slider
    assert draw.calls == [{"n": 3}]


@pytest.mark.parametrize("spec", ["text", 3, 2.5, None, [], (), {"a": 1}])
def test_bad_control_spec_raises_value_error(spec) -> None:
    draw = Recorder()
    with pytest.raises(ValueError, match=r"control 'x': give a \(min, max, step\) tuple, a list of options"):
        explorer(draw, x=spec)
    assert draw.calls == []


@pytest.mark.parametrize("spec", [(5, 1, 1), (0.0, 1.0, 0.0), (0, 10, -1), (2, 2, 1)])
def test_bad_slider_bounds_raise_value_error(spec) -> None:
    with pytest.raises(ValueError, match=r"control 'x': a slider \(min, max, step\) needs min < max and step > 0"):
        explorer(Recorder(), x=spec)


def test_draw_must_be_callable() -> None:
    with pytest.raises(TypeError, match="draw must be a function returning a Figure, got str"):
        explorer("not a function", x=[1, 2])


def test_without_a_frontend_nothing_is_built_or_drawn(monkeypatch) -> None:
    """LABKIT_WIDGETS=off (labkit run, grading, nbval): no widget, no draw, the specs still checked."""
    monkeypatch.setenv("LABKIT_WIDGETS", "off")
    draw = Recorder()
    assert explorer(draw, layer=["a", "b"], k=(1, 9, 2), smooth=True) is None
    assert draw.calls == []
    with pytest.raises(ValueError, match="control 'k'"):
        explorer(draw, k=(9, 1, 2))
    with pytest.raises(TypeError, match="draw must be a function"):
        explorer(3, k=(1, 9, 2))

