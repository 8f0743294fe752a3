"""infer.evaluate: LLaVA model_vqa round trip (resume, chunks, scores) and a PALO-style multilingual folder."""

import json
import os

import pytest

from infer import evaluate as ev
from tests.helpers.infer_tiny import tiny, write_image, write_tokenizer
from vlm_jax.checkpoint import save_model_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    _, cfg, params = tiny("clip-llama")
    ckpt = save_model_checkpoint(str(root / "ckpt"), params, cfg, tokenizer_dir=write_tokenizer(str(root / "tok")))
    os.makedirs(root / "images" / "zh")
    for i in range(2):
        write_image(str(root / "images" / f"im{i}.png"), seed=i)
    write_image(str(root / "images" / "zh" / "im0.png"), seed=3)
    qs = [{"question_id": i, "image": f"im{i % 2}.png", "text": "is there a cat ?", "category": ["adversarial", "random"][i % 2],
           "answer": ["yes", "no"][i % 3 == 0]} for i in range(4)]
    qs.append({"question_id": "t", "text": "what is two ?", "answer": "no"})  # text-only
    with open(root / "question.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in qs)
    for lang in ("en", "zh"):
        os.makedirs(root / "multi" / lang)
        with open(root / "multi" / lang / "question.jsonl", "w") as f:
            for i in range(2):
                f.write(json.dumps({"question_id": i, "image": "im0.png", "text": f"{lang} describe it", "category": "conv"}) + "\n")
    return root, ckpt


def _lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def test_model_vqa_round_trip(setup, capsys):
    root, ckpt = setup
    answers = str(root / "answers.jsonl")
    argv = ["--checkpoint", ckpt, "--questions", str(root / "question.jsonl"), "--image-folder", str(root / "images"),
            "--answers", answers, "--batch-size", "2", "--max-new-tokens", "4", "--template", "vicuna_v1"]
    assert ev.main(argv) == 0
    got = _lines(answers)
    assert [a["question_id"] for a in got] == [0, 1, 2, 3, "t"]
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in got)
    assert got[0]["prompt"] == "is there a cat ?" and got[0]["model_id"] == "ckpt"
    scores = json.load(open(root / "answers.scores.json"))
    assert scores["overall"]["scorer"] == "pope" and scores["overall"]["n"] == 5
    assert set(scores["categories"]) == {"adversarial", "random"}
    assert "pope" in capsys.readouterr().out

    with open(answers, "w") as f:  # an interrupted run: two answers were written
        f.writelines(json.dumps(a) + "\n" for a in got[:2])
    assert ev.main(argv) == 0
    again = _lines(answers)
    assert [a["question_id"] for a in again] == [0, 1, 2, 3, "t"]
    assert [a["text"] for a in again] == [a["text"] for a in got]  # greedy: same answers
    assert ev.main(argv) == 0 and len(_lines(answers)) == 5  # nothing left to answer

    chunk = str(root / "chunk1.jsonl")
    assert ev.main(argv[:-8] + ["--answers", chunk, "--num-chunks", "2", "--chunk-idx", "1", "--max-new-tokens", "4",
                                "--template", "vicuna_v1"]) == 0
    assert [a["question_id"] for a in _lines(chunk)] == [3, "t"]
    for bad in (argv + ["--chunk-idx", "2", "--num-chunks", "2"],
                argv + ["--temperature", "-1"], argv + ["--top-p", "0"],  # the sampling checks infer.sample has
                argv + ["--vision", str(root / "no_such_tower")],
                ["--checkpoint", ckpt, "--questions", str(root / "question.jsonl"), "--answers", chunk]):  # images?
        with pytest.raises(SystemExit) as e:
            ev.main(bad)
        assert e.value.code == 2


def test_multilingual_folder(setup, capsys):
    root, ckpt = setup
    out = str(root / "multi_answers")
    argv = ["--checkpoint", ckpt, "--questions", str(root / "multi"), "--image-folder", str(root / "images"),
            "--answers", out, "--batch-size", "4", "--max-new-tokens", "3", "--template", "vicuna_v1"]
    assert ev.main(argv) == 0
    table = capsys.readouterr().out
    assert "en" in table and "zh" in table
    for lang in ("en", "zh"):
        got = _lines(os.path.join(out, f"{lang}.jsonl"))
        assert [a["prompt"] for a in got] == [f"{lang} describe it"] * 2
    scores = json.load(open(out + ".scores.json"))
    assert scores["en"]["answered"] == 2 and scores["zh"]["answered"] == 2
