"""infer.scorers: normalisation, VQA accuracy, POPE metrics, multiple-choice letters."""

import pytest

from infer import scorers


def test_exact_and_vqa():
    assert scorers.normalize_answer("The Two dogs.") == "2 dogs"
    assert scorers.exact_match(["Two", "cat"], ["2", ["dog", "Dog."]]) == {"exact_match": 0.5, "n": 2}
    answers = ["red"] * 3 + ["blue"] * 7
    assert scorers.vqa_accuracy_one("Red", answers) == pytest.approx(0.9)  # 7 subsets with 3 reds, 3 with 2
    assert scorers.vqa_accuracy_one("blue", answers) == 1.0
    assert scorers.vqa_accuracy(["green"], [answers])["vqa_accuracy"] == 0.0


def test_pope():
    preds = ["Yes, there is.", "No.", "There is not a dog.", "yes", "No, there isn't"]
    gts = ["yes", "yes", "no", "no", "no"]
    s = scorers.pope(preds, gts)
    # tp=1 fn=1 fp=1 tn=2
    assert s["accuracy"] == pytest.approx(3 / 5) and s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5) and s["f1"] == pytest.approx(0.5) and s["yes_ratio"] == pytest.approx(0.4)


def test_multiple_choice_and_detect():
    assert [scorers.choice_letter(t) for t in ["B", "(C) a cat", "A. yes", "The answer is D.", "I think option B",
                                               "hmm"]] == ["B", "C", "A", "D", "B", None]
    s = scorers.multiple_choice(["A", "The answer is B", "dunno"], ["A", "C", "B"])
    assert s["accuracy"] == pytest.approx(1 / 3) and s["unparsed"] == pytest.approx(1 / 3)
    assert scorers.detect_kind([["a", "b"]]) == "vqa"
    assert scorers.detect_kind(["Yes", "no"]) == "pope"
    assert scorers.detect_kind(["A", "(b)"]) == "mc"
    assert scorers.detect_kind(["cat", "A"]) == "exact"
    assert scorers.score("auto", ["yes"], ["yes"])["scorer"] == "pope"
    with pytest.raises(ValueError):
        scorers.score("bleu", [], [])


def test_text_normalisation_is_language_neutral():
    same = scorers.same_text
    assert same(" Rouge. ", "rouge") and same("红色。", "红色") and same("लाल।", "लाल")
    assert same("سرخ۔", "سرخ") and same("أحمر؟", "أحمر") and same("ＲＥＤ！", "red")
    assert same("à  gauche !", "À gauche") and not same("red circle", "red")
    assert scorers.score("text", ["红色。", "bleu"], ["红色", ["rouge", "Bleu!"]]) == {"scorer": "text", "exact_match": 1.0,
                                                                                    "n": 2}
