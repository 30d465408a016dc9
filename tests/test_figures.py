"""Figures (codecircuits.figures): what results' plot() return, inline in Jupyter and saved offline."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pandas as pd
import pytest
import torch

from codecircuits import figures
from codecircuits.errors import InputError
from codecircuits.patching import SweepResult


def _svg_ok(text: str) -> ET.Element:
    root = ET.fromstring(text)  # well-formed XML, the figure's styles inside
    assert root.tag.endswith("svg") and root.find("{http://www.w3.org/2000/svg}style") is not None
    return root


def test_figure_shows_inline_and_saves_offline(tmp_path):
    fig = figures.heatmap(torch.arange(6.0).view(2, 3), title="a <b>", x_title="x", y_title="y")
    _svg_ok(fig.to_svg())
    assert fig._repr_svg_() == fig.to_svg() and "a &lt;b&gt;" in fig._repr_html_()
    svg, page = fig.save(tmp_path / "f.svg"), fig.save(tmp_path / "f.html")
    _svg_ok(svg.read_text().split("\n", 1)[1])
    assert page.read_text().startswith("<!doctype html>") and "http" not in page.read_text().replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing fetched from the network
    with pytest.raises(InputError, match=".png"):
        fig.save(tmp_path / "f.png")


def test_bars_keep_the_order_and_sign():
    fig = figures.bars(["a", "b", "c"], [3.0, -1.0, float("nan")], value_title="score")
    root = _svg_ok(fig.to_svg())
    rects = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert [r.get("fill") for r in rects] == ["#1f77b4", "#d62728"]  # NaN: no bar
    with pytest.raises(InputError, match="one value per label"):
        figures.bars(["a"], [1.0, 2.0])
    top = figures.top_bars(pd.DataFrame({"name": ["x", "y"], "v": [2.0, 1.0]}), "v")
    assert 'data-bars="2"' in top.svg
    with pytest.raises(InputError, match="No column"):
        figures.top_bars(pd.DataFrame({"name": ["x"]}), "v")


def test_sweep_plots_by_its_axes():
    two = SweepResult(torch.randn(3, 4, 2), ("layer", "pos"), torch.zeros(2), torch.ones(2), {"pos": list("abcd")})
    assert 'data-rows="3"' in two.plot().svg and 'data-cols="4"' in two.plot().svg
    three = SweepResult(torch.randn(2, 3, 5, 2), ("layer", "head", "pos"), torch.zeros(2))
    assert 'data-cols="15"' in three.plot().svg
    one = SweepResult(torch.randn(4, 2), ("layer",), torch.zeros(2))
    assert 'data-bars="4"' in one.plot("value").svg
    with pytest.raises(InputError, match="recovery"):
        one.plot("recovery")  # an ablation has no recovery
    with pytest.warns(DeprecationWarning):
        assert two.heatmap().startswith("<svg")
