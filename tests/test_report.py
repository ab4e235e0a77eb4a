"""report.html building blocks: escaping, the token view, number formatting, charts."""

import math

from tokenforget.report import delta_color, fmt, line_chart, token_view


def test_token_view_marks_unwanted_words_and_colours_by_probability_change():
    answer = "Basil <b>was</b> born."
    offsets = [(0, 5), (5, 9), (9, 12), (12, 16), (16, 22)]  # "Basil", " <b>", "was", "</b>", " born."
    before = [math.log(0.9), math.log(0.5), math.log(0.5), math.log(0.5), math.log(0.5)]
    after = [math.log(0.1), math.log(0.5), math.log(0.5), math.log(0.5), math.log(0.6)]
    view = token_view(answer, offsets, before, after, [(0, 5)])
    assert view.count('class="tok uw"') == 1 and ">Basil</span>" in view
    assert "<b>" not in view and "&lt;b&gt;" in view  # answer text is escaped
    assert "p 0.900 → 0.100" in view
    assert delta_color(-0.8) in view  # Basil: probability fell by 0.8
    assert delta_color(0.1) in view  # born: rose by 0.1


def test_delta_color_is_red_for_falls_and_blue_for_rises():
    assert delta_color(-0.5).startswith("rgba(220,38,38")
    assert delta_color(0.5).startswith("rgba(37,99,235")
    assert float(delta_color(-1.0).split(",")[-1][:-1]) > float(delta_color(-0.1).split(",")[-1][:-1])


def test_fmt():
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert fmt(0.12345) == "0.123" and fmt(0.0) == "0.000" and fmt(3e-5) == "3.00e-05" and fmt(7) == "7"


def test_line_chart_draws_each_series_inside_the_frame():
    svg = line_chart({"loss": [(0, 1.0), (1, 0.5), (2, float("nan"))], "pl": [(0, 0.2), (2, 0.3)]}, "t")
    assert svg.count("<polyline") == 2 and ">loss<" in svg and ">pl<" in svg
    assert line_chart({"x": []}, "empty") == ""
