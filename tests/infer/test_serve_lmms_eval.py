"""The lmms-eval recipe: tools.lmms_eval_task turns a local LLaVA question file into an lmms-eval
task; with lmms-eval installed (in its own venv: its pins clash with ours, e.g. wandb==0.25.0), the
slow test runs `python -m lmms_eval --model openai` against infer.serve on it. Set
LMMS_EVAL_PYTHON to that venv's python to run it; skipped otherwise."""

import json
import os
import subprocess

import pytest
import yaml

from tests.helpers.serve_tiny import BackgroundServer, model_folder, write_image
from tools import lmms_eval_task


def _questions(tmp_path):
    for i in range(3):
        write_image(str(tmp_path / f"im{i}.png"), seed=i)
    q = tmp_path / "question.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "text": "what is in this image ?", "image": f"im{i}.png",
                                     "answer": "cat"}) + "\n" for i in range(3)))
    return q


class _Tags(yaml.SafeLoader):
    pass


_Tags.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def test_task_folder(tmp_path):
    q = _questions(tmp_path)
    assert lmms_eval_task.main(["--questions", str(q), "--image-folder", str(tmp_path), "--out",
                                str(tmp_path / "task")]) == 0
    cfg = yaml.load((tmp_path / "task" / "vlm_jax_local.yaml").read_text(), Loader=_Tags)
    assert cfg["task"] == "vlm_jax_local" and cfg["doc_to_visual"] == "!function utils.doc_to_visual"
    docs = [json.loads(line) for line in open(cfg["dataset_kwargs"]["data_files"]["test"])]
    assert [d["answer"] for d in docs] == ["cat"] * 3 and all(os.path.isfile(d["image_path"]) for d in docs)
    with pytest.raises(SystemExit) as e:
        lmms_eval_task.main(["--questions", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t2")])
    assert e.value.code == 2


@pytest.mark.parametrize("line, says", [
    ('{"question_id": 0, "text": "q", "answer": "a"}\nnot json\n', ":2: not a JSON object"),
    ('{"question_id": 0, "text": "q"}\n', "question 0: no ground truth")])
def test_bad_question(tmp_path, capsys, line, says):
    (tmp_path / "q.jsonl").write_text(line)
    with pytest.raises(SystemExit) as e:  # read by infer.evaluate.read_questions: the file and line of a bad one
        lmms_eval_task.main(["--questions", str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "task")])
    assert e.value.code == 2 and says in capsys.readouterr().err and not (tmp_path / "task").exists()


@pytest.mark.slow
def test_lmms_eval_openai_backend_against_infer_serve(tmp_path):
    python = os.environ.get("LMMS_EVAL_PYTHON")
    if not python or not os.path.exists(python):
        pytest.skip("set LMMS_EVAL_PYTHON to a python with lmms-eval installed (its own venv)")
    q = _questions(tmp_path)
    lmms_eval_task.main(["--questions", str(q), "--image-folder", str(tmp_path), "--out", str(tmp_path / "task")])
    srv = BackgroundServer(["--checkpoint", model_folder(tmp_path), "--template", "vicuna_v1", "--max-new-tokens", "16"])
    try:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
        r = subprocess.run([python, "-m", "lmms_eval", "--model", "openai", "--model_args",
                            f"model=ckpt,base_url={srv.url}/v1,api_key=unused,num_concurrent=2",
                            "--tasks", "vlm_jax_local", "--include_path", str(tmp_path / "task"),
                            "--output_path", str(tmp_path / "out"), "--log_samples"],
                           env=env, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
        results = json.loads(open(next((tmp_path / "out").rglob("*_results.json"))).read())["results"]
        assert results["vlm_jax_local"]["exact_match,none"] == 0.0  # a random model does not say "cat"
        samples = [json.loads(line) for line in open(next((tmp_path / "out").rglob("*_samples_*.jsonl")))]
        import openai

        from tests.helpers.serve_tiny import data_url

        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        for s in sorted(samples, key=lambda s: s["doc_id"]):  # lmms-eval got the server's greedy answers
            want = client.chat.completions.create(model="ckpt", temperature=0, max_tokens=16, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(s["input_media"][0])}},
                                             {"type": "text", "text": s["input"]}]}]).choices[0].message.content
            assert s["filtered_resps"] == want
    finally:
        srv.stop()
