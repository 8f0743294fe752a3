"""infer.serve: the official openai client against it (greedy answer == infer.sample's, streamed
chunks join to the same text, usage counts), batching of concurrent requests without recompiling,
per-request seeds, stop strings, and a fuzz list of bad requests that each get a 4xx JSON error."""

import base64
import json
import threading
import urllib.error
import urllib.request

import pytest

from infer import sample
from tests.helpers.serve_tiny import BackgroundServer, data_url, model_folder, write_image

openai = pytest.importorskip("openai")
QUESTION = "what is in this image ?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    ckpt = model_folder(root)
    images = root / "images"
    images.mkdir()
    for i in range(3):
        write_image(str(images / f"im{i}.png"), seed=i)
    (root / "secret.png").write_bytes((images / "im0.png").read_bytes())
    srv = BackgroundServer(["--checkpoint", ckpt, "--template", "vicuna_v1", "--max-new-tokens", "12",
                            "--max-batch", "4", "--batch-wait-ms", "500", "--image-root", str(images),
                            "--max-body-mb", "4"])
    srv.ckpt, srv.images = ckpt, images
    yield srv
    srv.stop()


def _client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _user(text, image=None):
    parts = [{"type": "text", "text": text}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": image}})
    return [{"role": "user", "content": parts}]


def _health(server):
    return json.loads(urllib.request.urlopen(server.url + "/health").read())


def test_openai_client_greedy_equals_infer_sample(server, capsys):
    image = server.images / "im0.png"
    assert sample.main(["--checkpoint", server.ckpt, "--template", "vicuna_v1", "--max-new-tokens", "12",
                        "--prompt", QUESTION, "--image", str(image), "--json"]) == 0
    want = json.loads(capsys.readouterr().out)
    client = _client(server)
    name = client.models.list().data[0].id
    r = client.chat.completions.create(model=name, messages=_user(QUESTION, data_url(image)), temperature=0,
                                       max_tokens=12)
    assert r.choices[0].message.content == want["text"] and want["text"]
    assert r.usage.prompt_tokens == len(want["prompt_token_ids"])
    assert r.usage.completion_tokens == len(want["token_ids"])
    assert r.choices[0].finish_reason == ("length" if len(want["token_ids"]) == 12 else "stop")

    stream = client.chat.completions.create(model=name, messages=_user(QUESTION, data_url(image)), temperature=0,
                                            max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want["text"]
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # it streamed
    assert chunks[-1].usage.completion_tokens == len(want["token_ids"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason

    # the same image as a path under --image-root, and as a file:// URL
    for url in ("im0.png", (server.images / "im0.png").as_uri()):
        r2 = client.chat.completions.create(model=name, messages=_user(QUESTION, url), temperature=0, max_tokens=12)
        assert r2.choices[0].message.content == want["text"]


def _together(client, name, reqs):
    out = [None] * len(reqs)

    def ask(i):
        out[i] = client.chat.completions.create(model=name, **reqs[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


def test_concurrent_requests_share_a_batch_and_never_recompile(server):
    client = _client(server)
    name = client.models.list().data[0].id
    im = [data_url(server.images / f"im{i}.png") for i in range(3)]
    greedy = [dict(messages=_user(QUESTION, im[1]), temperature=0, max_tokens=10),
              dict(messages=_user("describe it please", im[2]), temperature=0, max_tokens=7),
              dict(messages=_user("yes no red blue cat", im[0]), temperature=0, max_tokens=12),
              dict(messages=_user("one two", im[1]), temperature=0, max_tokens=9)]
    hot = [dict(messages=_user(QUESTION, im[2]), temperature=1.5, seed=7, max_tokens=12),
           dict(messages=_user("one two", im[0]), temperature=0.9, top_p=0.8, seed=3, max_tokens=9)]
    solo = [client.chat.completions.create(model=name, **kw) for kw in greedy]  # one by one
    before = _health(server)
    first = _together(client, name, greedy[:2] + hot)
    second = _together(client, name, hot[::-1] + greedy[2:])  # other companions, other order
    after = _health(server)
    assert after["batches"] - before["batches"] < 8  # requests were decoded together
    answers = dict(zip(["g0", "g1", "h0", "h1"], first)) | dict(zip(["h1'", "h0'", "g2", "g3"], second))
    for i, want in enumerate(solo):  # greedy: as alone
        got = answers[f"g{i}"]
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.usage.completion_tokens == want.usage.completion_tokens <= greedy[i]["max_tokens"]
    for h in ("h0", "h1"):  # sampled with a seed: the same whatever it is batched with
        assert answers[h].choices[0].message.content == answers[h + "'"].choices[0].message.content

    # steady state: another prompt length and token budget in the same buckets compiles nothing
    compiled = _health(server)["compiled_functions"]
    r = client.chat.completions.create(model=name, messages=_user("red blue", im[1]), temperature=0, max_tokens=5)
    assert r.usage.completion_tokens <= 5
    assert _health(server)["compiled_functions"] == compiled


def test_stop_strings_and_multi_turn(server):
    client = _client(server)
    name = client.models.list().data[0].id
    msgs = _user(QUESTION, data_url(server.images / "im0.png"))
    full = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=12)
    words = full.choices[0].message.content.split()
    assert len(words) >= 3
    stop = " " + words[2]
    cut = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=12, stop=[stop])
    assert full.choices[0].message.content.startswith(cut.choices[0].message.content)
    assert stop not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens
    streamed = client.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=12, stop=stop,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.choices[0].message.content

    # (prompts kept between 33 and 64 tokens: the shape bucket the other tests compiled)
    chat = [*msgs, {"role": "assistant", "content": " ".join(words[:3])}, {"role": "user", "content": "describe it"}]
    r = client.chat.completions.create(model=name, messages=chat, temperature=0, max_tokens=4)
    assert r.usage.prompt_tokens > full.usage.prompt_tokens and r.usage.completion_tokens <= 4
    system = {"role": "system", "content": " ".join(["you are a helpful assistant"] * 4)}
    r = client.chat.completions.create(model=name, messages=[system, *msgs], temperature=0, max_tokens=4)
    assert r.usage.prompt_tokens < full.usage.prompt_tokens  # it replaced vicuna's longer default system prompt


def _post(server, body: bytes, path="/v1/chat/completions", method="POST"):
    req = urllib.request.Request(server.url + path, data=body if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_get_4xx_json_and_the_server_stays_up(server):
    name = _client(server).models.list().data[0].id
    good = {"model": name, "messages": _user(QUESTION, data_url(server.images / "im0.png")), "temperature": 0,
            "max_tokens": 12}

    def with_(**kw):
        return json.dumps({**good, **kw}).encode()

    def image(url):
        return with_(messages=_user(QUESTION, url))

    fuzz = {
        "malformed JSON": b'{"model": ',
        "not UTF-8": b'\xff\xfe{',
        "not an object": b"[1, 2]",
        "no model": json.dumps({"messages": good["messages"]}).encode(),
        "unknown model": with_(model="gpt-17"),
        "messages not a list": with_(messages="hello"),
        "empty messages": with_(messages=[]),
        "bad role": with_(messages=[{"role": "robot", "content": "hi"}]),
        "content a number": with_(messages=[{"role": "user", "content": 42}]),
        "unknown part type": with_(messages=[{"role": "user", "content": [{"type": "audio"}]}]),
        "image url a number": image(123),
        "last message from the assistant": with_(messages=[*good["messages"], {"role": "assistant", "content": "x"}]),
        "temperature a string": with_(temperature="hot"),
        "temperature too high": with_(temperature=9),
        "top_p zero": with_(top_p=0),
        "max_tokens negative": with_(max_tokens=-1),
        "max_tokens a float": with_(max_tokens=2.5),
        "stream a string": with_(stream="yes"),
        "five stop strings": with_(stop=["a", "b", "c", "d", "e"]),
        "n=2": with_(n=2),
        "seed a string": with_(seed="x"),
        "too long for the context": with_(max_tokens=100000),
        "<image> typed in the text": with_(messages=_user("<image> what ?")),
        "broken base64": image("data:image/png;base64,iVBORw0K!!!not-base64"),
        "base64 of no image": image("data:image/png;base64," + base64.b64encode(b"hello world").decode()),
        "truncated png": image("data:image/png;base64," + base64.b64encode(
            (server.images / "im0.png").read_bytes()[:60]).decode()),
        "data URL without base64": image("data:image/png,abc"),
        "remote URL": image("http://example.com/cat.png"),
        "path outside --image-root": image("../secret.png"),
        "absolute path outside --image-root": image(str(server.images.parent / "secret.png")),
        "missing file": image("nope.png"),
        "a 50 MB body": with_(padding="x" * (50 * 2**20)),
    }
    for what, body in fuzz.items():
        status, reply = _post(server, body)
        assert 400 <= status < 500, (what, status, reply)
        assert isinstance(reply["error"]["message"], str) and reply["error"]["message"], what
    assert _post(server, b"", "/v1/chat/completions", "GET")[0] == 405
    assert _post(server, b"", "/v1/nothing", "GET")[0] == 404
    status, reply = _post(server, json.dumps(good).encode())
    assert status == 200 and reply["choices"][0]["message"]["content"]
    assert _health(server)["errors"] == 0


def test_models_health_and_page(server):
    models = json.loads(urllib.request.urlopen(server.url + "/v1/models").read())
    assert [m["id"] for m in models["data"]] == ["ckpt"] and models["object"] == "list"
    assert _health(server)["status"] == "ok"
    page = urllib.request.urlopen(server.url + "/").read().decode()
    assert "<textarea" in page and "/v1/chat/completions" in page


def test_cli_usage_errors(tmp_path):
    from infer import serve

    for bad in ([], ["--checkpoint", str(tmp_path / "none")], ["--checkpoint", str(tmp_path), "--max-batch", "0"],
                ["--checkpoint", str(tmp_path), "--image-root", str(tmp_path / "none")]):
        with pytest.raises(SystemExit) as e:
            serve.main(bad)
        assert e.value.code == 2, bad
    with pytest.raises(SystemExit) as e:
        serve.main(["--help"])
    assert e.value.code == 0


@pytest.mark.slow
def test_warmup_compiles_every_bucket_before_serving(tmp_path):
    ckpt = model_folder(tmp_path)
    image = write_image(str(tmp_path / "im.png"))
    srv = BackgroundServer(["--checkpoint", ckpt, "--template", "vicuna_v1", "--max-new-tokens", "12",
                            "--max-batch", "2", "--batch-wait-ms", "300", "--warmup-prompt-tokens", "60"])
    try:
        compiled = _health(srv)["compiled_functions"]
        client = _client(srv)
        one = dict(messages=_user(QUESTION, data_url(image)), temperature=0, max_tokens=12)
        two = dict(messages=_user("describe it please", data_url(image)), temperature=0, max_tokens=9)
        client.chat.completions.create(model="ckpt", **one)
        _together(client, "ckpt", [one, two])
        assert _health(srv)["batches"] >= 1 and _health(srv)["compiled_functions"] == compiled
    finally:
        srv.stop()
