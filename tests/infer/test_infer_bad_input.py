"""infer.evaluate / infer.sample on bad input: a bad question is answered around (error field, exit 1 with
a count, a rerun retries it without crashing), a cut answers line is repaired, batches are not padded
past the questions present, the model's context is enforced, bad usage is one line and exit 2."""

import json
import os

import pytest

from infer import evaluate as ev
from infer import runner, sample
from tests.helpers.data import png_bytes
from tests.helpers.infer_tiny import write_checkpoint, write_image

TEXT = "what is in this image ?"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_bad")
    ckpt = write_checkpoint(str(root))
    os.makedirs(root / "images")
    for i in range(2):
        write_image(str(root / "images" / f"im{i}.png"), seed=i)
    (root / "images" / "empty.png").write_bytes(b"")
    (root / "images" / "cut.png").write_bytes(png_bytes(28, 28)[:100])
    return root, ckpt


def _write(path, questions):
    with open(path, "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    return str(path)


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def _argv(root, ckpt, questions, answers, *extra):
    return ["--checkpoint", ckpt, "--questions", questions, "--image-folder", str(root / "images"),
            "--answers", answers, "--max-new-tokens", "4", "--template", "vicuna_v1", *extra]


def test_cut_last_answer_line_is_repaired_not_appended_to(setup):
    root, ckpt = setup
    qs = _write(root / "q_cut.jsonl", [{"question_id": i, "image": f"im{i % 2}.png", "text": TEXT} for i in range(4)])
    answers = str(root / "a_cut.jsonl")
    argv = _argv(root, ckpt, qs, answers, "--batch-size", "2")
    assert ev.main(argv) == 0
    whole = open(answers).read().splitlines(keepends=True)
    with open(answers, "w") as f:  # killed while writing the third line
        f.write("".join(whole[:2]) + whole[2][: len(whole[2]) // 2])
    assert ev.main(argv) == 0
    got = _lines(answers)
    assert [a["question_id"] for a in got] == [0, 1, 2, 3]
    assert [a["text"] for a in got] == [json.loads(x)["text"] for x in whole]
    with open(answers, "w") as f:  # killed right before the newline: the last answer is whole, keep it
        f.write("".join(whole[:2]) + whole[2].rstrip("\n"))
    assert ev.main(argv) == 0
    got = _lines(answers)
    assert [a["question_id"] for a in got] == [0, 1, 2, 3]
    assert got[2]["answer_id"] == json.loads(whole[2])["answer_id"]
    with open(answers, "w") as f:  # a bad line in the middle is not ours to drop: refuse, change nothing
        f.write(whole[0] + "not json\n" + whole[1])
    with pytest.raises(SystemExit) as e:
        ev.main(argv)
    assert e.value.code == 2
    assert open(answers).read() == whole[0] + "not json\n" + whole[1]


def test_bad_questions_are_answered_around_and_retried(setup, capsys):
    root, ckpt = setup
    bad = {1: {"image": "empty.png", "text": TEXT},  # 0 bytes
           2: {"image": "cut.png", "text": TEXT},  # a truncated PNG
           3: {"image": "im0.png", "text": "<image> one <image> two"},  # 2 tags, 1 image
           4: {"text": ""},  # nothing to ask
           5: {"text": "cat " * 600}}  # longer than the model's context (256)
    qs = [{"question_id": 0, "image": "im0.png", "text": TEXT}, *({"question_id": k, **v} for k, v in bad.items()),
          {"question_id": 6, "text": "describe a cat"}]
    path = _write(root / "q_bad.jsonl", qs)
    answers = str(root / "a_bad.jsonl")
    argv = _argv(root, ckpt, path, answers, "--batch-size", "4")
    assert ev.main(argv) == 1
    out = capsys.readouterr()
    assert "5 of 7 questions failed" in out.err
    got = {a["question_id"]: a for a in _lines(answers)}
    assert sorted(got) == list(range(7))
    assert "error" not in got[0] and "error" not in got[6] and got[0]["text"]
    reasons = {1: "not_an_image", 2: "corrupt_image", 3: "image_tag_mismatch", 4: "empty_question", 5: "prompt_too_long"}
    for k, reason in reasons.items():
        assert got[k]["error"].startswith(reason), got[k]
        assert got[k]["text"] == ""
    scores = json.load(open(root / "a_bad.scores.json"))
    assert scores["answered"] == 2 and scores["failed"] == 5

    assert ev.main(argv) == 1  # the rerun retries the failures (no crash), keeps the answers
    again = _lines(answers)
    assert sorted(a["question_id"] for a in again) == list(range(7))
    assert {a["question_id"]: a["answer_id"] for a in again if "error" not in a} == \
           {k: got[k]["answer_id"] for k in (0, 6)}
    write_image(str(root / "images" / "empty.png"), seed=5)  # the user fixes one image
    try:
        assert ev.main(argv) == 1
        fixed = {a["question_id"]: a for a in _lines(answers)}
        assert len(fixed) == 7 == len(_lines(answers)) and "error" not in fixed[1] and fixed[1]["text"]
        assert "4 of 7 questions failed" in capsys.readouterr().err
    finally:
        (root / "images" / "empty.png").write_bytes(b"")


def test_batches_hold_only_the_questions_present(setup, monkeypatch):
    root, ckpt = setup
    rows = []
    make_batch = runner.make_batch

    def spy(m, batch_rows, num_rows=None):
        out = make_batch(m, batch_rows, num_rows)
        rows.append(out["tokens"].shape[0])
        return out

    monkeypatch.setattr(runner, "make_batch", spy)
    qs = _write(root / "q_five.jsonl", [{"question_id": i, "image": "im0.png", "text": TEXT} for i in range(5)])
    assert ev.main(_argv(root, ckpt, qs, str(root / "a_five.jsonl"), "--batch-size", "4096")) == 0
    assert rows == [5]


def test_context_limit(setup, capsys):
    root, ckpt = setup
    qs = _write(root / "q_ctx.jsonl", [{"question_id": 0, "text": "cat " * 200}])
    answers = str(root / "a_ctx.jsonl")
    with pytest.raises(SystemExit) as e:  # no room for any prompt: bad usage, before generating
        ev.main(_argv(root, ckpt, qs, answers) + ["--max-new-tokens", "256"])
    assert e.value.code == 2 and "context" in capsys.readouterr().err
    assert not os.path.exists(answers)
    assert ev.main(_argv(root, ckpt, qs, answers) + ["--max-new-tokens", "64"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 answer cut at the model's context of 256 tokens" in err
    prompt_len = len(runner.prompt_ids(runner.load(ckpt), "vicuna_v1", "cat " * 200, 0))
    assert 0 < len(_lines(answers)[0]["text"].split()) <= 256 - prompt_len < 64


def test_bad_usage_is_one_line_exit_2(setup, capsys):
    root, ckpt = setup
    good = _write(root / "q_good.jsonl", [{"question_id": 0, "text": TEXT}])
    (root / "not_a_ckpt").mkdir()
    (root / "answers_dir").mkdir()
    (root / "multi" / "en").mkdir(parents=True)
    _write(root / "multi" / "en" / "question.jsonl", [{"question_id": 0, "text": TEXT}])
    cases = [
        _argv(root, ckpt, _write(root / "q_list.jsonl", [{"question_id": [1], "text": TEXT}]), str(root / "a.jsonl")),
        _argv(root, ckpt, _write(root / "q_dup.jsonl", [{"question_id": 1, "text": TEXT}] * 2), str(root / "a.jsonl")),
        _argv(root, ckpt, good, str(root / "answers_dir")),  # --answers is a folder
        _argv(root, ckpt, str(root / "multi"), good),  # multilingual: --answers is a file
        _argv(root, ckpt, good, str(root / "a.jsonl")) + ["--template", "bogus"],
        _argv(root, str(root / "not_a_ckpt"), good, str(root / "a.jsonl")),
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as e:
            ev.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and err and "Traceback" not in "".join(err), (argv, err)
    assert not os.path.exists(root / "a.jsonl")


def test_sample_bad_input(setup, capsys):
    root, ckpt = setup
    src = ["--checkpoint", ckpt, "--template", "vicuna_v1", "--max-new-tokens", "4"]
    for bad, words in ((["--prompt", TEXT, "--image", str(root / "images" / "empty.png")], "empty.png"),
                       (["--prompt", TEXT, "--image", str(root / "images" / "cut.png")], "cut.png"),
                       (["--prompt", "cat " * 600], "prompt_too_long"),
                       (["--prompt", TEXT, "--max-new-tokens", "300"], "context"),
                       (["--prompt", TEXT, "--checkpoint", str(root / "images")], "images"),
                       (["--prompt", TEXT, "--template", "bogus"], "bogus")):  # an option: argparse's usage + error
        with pytest.raises(SystemExit) as e:
            sample.main(src + bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and words in err[-1] and "Traceback" not in "".join(err), (bad, err)
        assert len(err) == 1 or "--template" in bad, err

    prompts = _write(root / "prompts.jsonl", [{"prompt": TEXT, "image": "im0.png"}, {"prompt": TEXT, "image": "empty.png"},
                                              {"prompt": "describe a cat"}])
    assert sample.main(src + ["--prompts", prompts, "--image-folder", str(root / "images"), "--json"]) == 1
    out = capsys.readouterr()
    got = [json.loads(x) for x in out.out.splitlines()]
    assert [("error" in g) for g in got] == [False, True, False]
    assert got[1]["error"].startswith("not_an_image") and "1 of 3 prompts failed" in out.err
