"""The measurement protocol: every case its own target, stratified over the attribute values, and a confusion
table per attribute, so a weak value cannot hide behind an easy one (and n counts independent cases)."""
from collections import Counter

import pytest

from devtools.world import report
from devtools.world import scene as world
from devtools.world.evaluate import Score
from devtools.world.reader import Reading


def _spread(values) -> int:
    counts = Counter(values)
    return max(counts.values()) - min(counts.values())


@pytest.mark.parametrize("row", ["text only, full caption", "text naming only the shape", "+ object module",
                                 "+ object module, reference shows another shape", "+ style module",
                                 "+ both, trained apart, assembled"])
@pytest.mark.parametrize("n", [60, 200])
def test_every_value_is_asked_for_equally_often_and_cases_do_not_share_targets(row, n):
    cases = report.row_cases(row, n)
    targets = [c.target for c in cases]
    for attribute, values in enumerate((world.SHAPES, world.COLOURS, world.BACKGROUNDS)):
        assert {t[attribute] for t in targets} == set(values)
        assert _spread(t[attribute] for t in targets) <= 1, (row, attribute)
    assert all(t in world.SEEN for t in targets)
    # no combination comes back before all 84 seen ones have been used: no blocks of copies
    assert len(set(targets)) == min(n, len(world.SEEN))
    assert len({c.object_ref[2] for c in cases if c.object_ref}) in (0, n)  # every reference its own seed


def test_unseen_rows_draw_only_held_out_combinations_and_stay_balanced():
    cases = report.row_cases("text only, full caption", 100, combinations=world.HELD_OUT, split="eval/unseen/x")
    assert {c.target for c in cases} == set(world.HELD_OUT)
    for attribute in range(3):
        assert _spread(c.target[attribute] for c in cases) <= 2


def test_references_of_another_shape_never_show_the_captions_shape_and_cover_every_shape():
    cases = report.row_cases("+ object module, reference shows another shape", 200)
    assert all(c.other_shape and c.object_ref[0] != c.target[0] for c in cases)
    assert all(c.object_ref[1] == c.target[1] for c in cases)  # the colour comes from the reference
    assert _spread(c.object_ref[0] for c in cases) == 0 and len({c.object_ref[0] for c in cases}) == 4
    same = report.row_cases("+ object module", 200)
    assert all(not c.other_shape and c.object_ref[0] == c.target[0] for c in same)


def test_captions_say_what_the_row_asks_for():
    for case in report.row_cases("text only, full caption", 40):
        shape, colour, background = case.target
        assert shape in case.caption and colour in case.caption
        assert world.BACKGROUND_WORDS[background] in case.caption
    for case in report.row_cases("+ both, trained apart, assembled", 40):
        assert case.target[0] in case.caption and case.target[1] not in case.caption
        assert case.style_ref[0] == case.target[2]


def test_the_confusion_table_shows_a_weak_value_the_total_hides():
    score = Score()
    for colour in world.COLOURS:
        for k in range(10):
            read = "red" if colour == "magenta" and k < 8 else colour  # magenta mostly read as red
            score.add(("circle", colour, "plain"), Reading("circle", read, "plain", {}))
    score.add(("square", "red", "dots"), Reading(None, None, "dots", {}))
    summary = score.summary()
    assert summary["n"] == 61
    assert summary["colour"]["accuracy"] == pytest.approx(52 / 61)
    per_value = summary["colour"]["per_value"]
    assert per_value["magenta"]["accuracy"] == pytest.approx(0.2) and per_value["magenta"]["n"] == 10
    assert per_value["red"]["n"] == 11 and per_value["red"]["accuracy"] == pytest.approx(10 / 11)
    assert summary["colour"]["confusion"]["magenta"] == {"red": 8, "magenta": 2}
    assert summary["shape"]["confusion"]["square"] == {"none": 1}
    line = report.markdown({"rows": {"r": {"all": summary}}, "unseen": {}, "sweep": {}, "ranges": {}})
    assert "magenta 0.20" in line and "cyan 1.00" in line
