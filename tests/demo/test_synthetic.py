"""The generated demo dataset (demo/world.py, dataset.py, languages.py) and its tokenizer (tools/train_tokenizer.py)."""

import json
import os
import random
import re

import pytest
from PIL import Image

from demo import dataset as F
from demo import make_data as make_demo_data
from demo import world as S
from demo.language_scripts import in_language_script
from demo.languages import LANGUAGES, RIDDLE_SHAPES, WORLD_COLORS, pick, tokenizer_split_words
from tests.helpers.demo_records import language_of as _lang
from tools import train_tokenizer

PARAMS = S.Params(seed=3, num_train=120, num_eval=8)
QUOTED = re.compile(r'"[^"]*"|“[^”]*”|«[^»]*»|「[^」]*」')  # translation tasks quote a foreign word


def _load(root, name):
    with open(os.path.join(root, name), encoding="utf-8") as f:
        return json.load(f) if name.endswith(".json") else [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("demo_data"))
    manifest = F.write_dataset(root, PARAMS)
    return root, manifest


@pytest.fixture(scope="module")
def tokenizer_dir(data):
    root, _ = data
    out, trained = train_tokenizer.build_tokenizer(
        [os.path.join(root, "align.json"), os.path.join(root, "sft.json")], os.path.join(root, "tokenizer"), 800,
        split_words=tokenizer_split_words())
    assert trained
    return out


def _all_texts(root):
    for name in ("align.json", "sft.json"):
        for record in _load(root, name):
            for turn in record["conversations"]:
                yield _lang(record), turn["value"].replace(S.IMAGE_TOKEN + "\n", "")
    for lang in LANGUAGES.values():
        for name in ("question.jsonl", "answers.jsonl"):
            for row in _load(root, f"eval/{lang.name}/{name}"):
                yield lang, row["text"]


# ----------------------------------------------------------------------------- dataset


def test_deterministic_and_independent_of_workers(data, tmp_path):
    root, manifest = data
    again = F.write_dataset(str(tmp_path / "a"), PARAMS, workers=2)
    assert again["content_hash"] == manifest["content_hash"] == F.dataset_hash(root, manifest)
    for rel in F.dataset_files(root, manifest)[:5] + ["sft.json", "eval/urdu/answers.jsonl"]:
        with open(os.path.join(root, rel), "rb") as f1, open(tmp_path / "a" / rel, "rb") as f2:
            assert f1.read() == f2.read(), rel
    other = F.write_dataset(str(tmp_path / "b"), S.Params(seed=4, num_train=120, num_eval=8))
    assert other["content_hash"] != manifest["content_hash"]


def test_reuse_and_verification(tmp_path):
    root, params = str(tmp_path), S.Params(seed=1, num_train=12, num_eval=4)
    F.write_dataset(root, params)
    stamp = os.path.getmtime(os.path.join(root, "sft.json"))
    assert F.is_complete(root, params, verify=True)
    F.write_dataset(root, params)
    assert os.path.getmtime(os.path.join(root, "sft.json")) == stamp  # reused, not rewritten
    assert not F.is_complete(root, S.Params(seed=1, num_train=13, num_eval=4))
    with open(os.path.join(root, "images/000003.png"), "ab") as f:
        f.write(b"x")
    assert F.is_complete(root, params) and not F.is_complete(root, params, verify=True)
    os.remove(os.path.join(root, "eval/hindi/question.jsonl"))
    assert not F.is_complete(root, params)


def test_a_manifest_written_before_a_params_field_existed_is_still_complete(tmp_path):
    root, params = str(tmp_path), S.Params(seed=1, num_train=12, num_eval=4)
    F.write_dataset(root, params)
    path = os.path.join(root, F.MANIFEST)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    del manifest["params"]["contrast_questions"]  # a field added after this dataset was written
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    assert F.is_complete(root, params, verify=True)
    assert not F.is_complete(root, S.Params(seed=1, num_train=12, num_eval=4, contrast_questions=0.5))
    manifest["params"]["seed"] = 2  # a recorded field that differs still counts
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    assert not F.is_complete(root, params)


def test_llava_json(data):
    root, manifest = data
    ids = set()
    for name in ("align.json", "sft.json"):
        records = _load(root, name)
        assert len(records) == manifest["counts"][name[:-5]]
        for r in records:
            assert r["id"] not in ids
            ids.add(r["id"])
            conv = r["conversations"]
            assert len(conv) % 2 == 0 and conv
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
            text = "".join(t["value"] for t in conv)
            if "image" in r:
                assert os.path.isfile(os.path.join(root, "images", r["image"]))
                assert conv[0]["value"].startswith("<image>\n") and text.count("<image>") == 1
            else:
                assert name == "sft.json" and "<image>" not in text
    text_only = [r for r in _load(root, "sft.json") if "image" not in r]
    assert len(text_only) == manifest["counts"]["sft_text_only"] == PARAMS.num_text_only > 0


def test_every_language_in_its_script(data):
    root, _ = data
    seen = {name: set() for name in ("align.json", "sft.json")}
    for name in seen:
        for r in _load(root, name):
            lang = _lang(r)
            seen[name].add(lang.code)
            for turn in r["conversations"]:
                text = QUOTED.sub("", turn["value"].replace("<image>\n", ""))
                assert in_language_script(text, lang.code), (lang.code, turn["value"])
    assert seen["align.json"] == seen["sft.json"] == set(LANGUAGES)


def _lexicon(lang):
    words = set(lang.colors) | set(getattr(lang, "colors_f", ())) | set(lang.shapes) | set(lang.numbers)
    return words | set(lang.sides) | {a for _, a in lang.world}


def test_answers_are_in_the_language_of_the_question(data):
    root, _ = data
    for r in _load(root, "sft.json"):
        lang = _lang(r)
        for human, gpt in zip(r["conversations"][::2], r["conversations"][1::2]):
            if lang.describe_prompts.count(human["value"].replace("<image>\n", "")):
                assert in_language_script(gpt["value"], lang.code)  # a caption
            else:
                assert gpt["value"] in _lexicon(lang), (lang.code, human["value"], gpt["value"])


def test_grammar_spot_checks():
    rng = random.Random(0)
    fr, es, ru, ar, en = (LANGUAGES[c] for c in ("fr", "es", "ru", "ar", "en"))
    star, circle, green, orange = 3, 0, 1, 5
    assert fr.ask_color(green, star, rng)[1] == "verte" and fr.ask_color(green, circle, rng)[1] == "vert"
    assert es.ask_color(0, star, rng)[1] == "roja" and ru.ask_color(2, star, rng)[1] == "синяя"
    assert ar.ask_color(0, circle, rng)[1] == "أحمر"  # the colour noun, whatever the shape's gender
    assert ru.caption([(2, star)], random.Random(1)).lower().endswith("синяя звезда.")
    assert "دائرة حمراء" in ar.caption([(0, circle)], rng)
    assert "an orange star" in en.caption([(orange, star)], rng).lower()
    q = {fr.ask_position(star, 0, random.Random(i))[0] for i in range(8)}
    assert q == {"L'étoile est-elle à gauche ou à droite ?", "L'étoile est-elle à droite ou à gauche ?"}
    assert es.ask_position(star, 2, rng)[1] == "arriba" and "¿La estrella está" in es.ask_position(star, 2, rng)[0]
    for lang in LANGUAGES.values():  # text-only answers name the intended colour / shape
        for (_, answer), c in zip(lang.world, WORLD_COLORS):
            forms = {lang.colors[c], getattr(lang, "colors_f", lang.colors)[c]} | ({"синее"} if lang.code == "ru" else set())
            assert answer in forms, (lang.code, answer)
        assert len(lang.riddles) == len(RIDDLE_SHAPES) and len(set(lang.colors)) == len(lang.colors) == 6


def test_languages_whose_questions_open_with_the_object_get_more_examples():
    counts = {}
    for index in range(3000):
        lang = S.make_train_example(S.Params(num_train=10 ** 6), index).sft["id"].rsplit("-", 1)[1]
        counts[lang] = counts.get(lang, 0) + 1
    weights = {code: S.TRAIN_LANGUAGE_WEIGHTS.get(code, 1) for code in LANGUAGES}
    for code, w in weights.items():
        expected = 3000 * w / sum(weights.values())
        assert abs(counts[code] - expected) < 4 * expected ** 0.5, (code, counts[code], expected)
    assert weights["hi"] > weights["en"]


def test_eval_layout(data):
    root, _ = data
    reference_ids = None
    for lang in LANGUAGES.values():
        questions = _load(root, f"eval/{lang.name}/question.jsonl")
        answers = _load(root, f"eval/{lang.name}/answers.jsonl")
        assert [set(q) for q in questions] == [{"question_id", "image", "text", "category"}] * PARAMS.num_eval
        assert [set(a) for a in answers] == [{"question_id", "text", "category"}] * PARAMS.num_eval
        ids = [q["question_id"] for q in questions]
        assert ids == [a["question_id"] for a in answers] and len(set(ids)) == len(ids)
        assert reference_ids in (None, ids)  # parallel across languages, as PALO's
        reference_ids = ids
        assert {q["category"] for q in questions} == set(S.CATEGORIES)
        for q, a in zip(questions, answers):
            assert os.path.isfile(os.path.join(root, "eval/images", q["image"]))
            assert "<image>" not in q["text"] and in_language_script(q["text"], lang.code)
            assert a["text"] in _lexicon(lang) and q["category"] == a["category"]
    assert len(os.listdir(os.path.join(root, "eval"))) == len(LANGUAGES) + 1  # + images/


def test_images_show_their_colours(data):
    root, _ = data
    for i in range(10):
        scene = S.make_train_example(PARAMS, i).scene
        img = Image.open(os.path.join(root, "images", f"{i:06d}.png"))
        side = PARAMS.image_size
        assert img.size == (side, side) and img.mode == "RGB"
        for o in scene.objs:
            pixel = img.getpixel((int(o.cx * side), int(o.cy * side)))
            expected = S.RGB[S.COLORS[o.color]]
            assert max(abs(p - e) for p, e in zip(pixel, expected)) <= 2, (i, o, pixel)


def test_free_layout_places_shapes_anywhere_inside_the_image_and_apart():
    """layout=free: sizes across FREE_SIZE, centres anywhere (most shapes straddle a 32 px patch
    boundary, which grid shapes never do), every shape inside the image, none touching another, and
    position questions only about shapes in a side band."""
    rng, straddles, sizes, objects = random.Random(0), 0, [], 0
    for _ in range(300):
        scene = S.random_scene(rng, layout="free")
        objs = scene.objs
        assert list(objs) == sorted(objs, key=lambda o: (o.cx, o.cy))
        for i, o in enumerate(objs):
            reach = 1.25 * o.size
            assert S.FREE_SIZE[0] <= o.size <= S.FREE_SIZE[1] and reach <= o.cx <= 1 - reach and reach <= o.cy <= 1 - reach
            assert (o.col, o.row) == tuple(0 if v < S.FREE_SIDE_BAND else 2 if v > 1 - S.FREE_SIDE_BAND else 1 for v in (o.cx, o.cy))
            for p in objs[i + 1:]:
                assert ((o.cx - p.cx) ** 2 + (o.cy - p.cy) ** 2) ** 0.5 > reach + 1.25 * p.size
            straddles += _straddles(o)
            sizes.append(o.size)
            objects += 1
        for k, o in enumerate(objs):
            assert set(scene.position_sides(k)) == {side for side, on in enumerate(
                (o.cx < S.FREE_SIDE_BAND, o.cx > 1 - S.FREE_SIDE_BAND, o.cy < S.FREE_SIDE_BAND, o.cy > 1 - S.FREE_SIDE_BAND)) if on}
    assert straddles > objects / 2 and min(sizes) < 0.07 and max(sizes) > 0.16
    assert not any(_straddles(o) for _ in range(100) for o in S.random_scene(rng).objs)


def _straddles(o) -> bool:
    """The shape's inner disc (radius = half-size) crosses a boundary of the 3x3 grid of 32 px patches."""
    return any(int((v - o.size) * 3) != int((v + o.size) * 3) for v in (o.cx, o.cy))


def test_free_layout_dataset_is_deterministic_and_shows_its_colours(tmp_path):
    params = S.Params(seed=3, num_train=40, num_eval=8, layout="free")
    manifest = F.write_dataset(str(tmp_path / "a"), params)
    assert F.write_dataset(str(tmp_path / "b"), params, workers=2)["content_hash"] == manifest["content_hash"]
    assert manifest["params"]["layout"] == "free" and F.is_complete(str(tmp_path / "a"), params, verify=True)
    assert not F.is_complete(str(tmp_path / "a"), S.Params(seed=3, num_train=40, num_eval=8))
    for i in range(10):
        scene = S.make_train_example(params, i).scene
        img = Image.open(tmp_path / "a" / "images" / f"{i:06d}.png")
        for o in scene.objs:
            pixel = img.getpixel((int(o.cx * params.image_size), int(o.cy * params.image_size)))
            assert max(abs(p - e) for p, e in zip(pixel, S.RGB[S.COLORS[o.color]])) <= 2, (i, o, pixel)
    with pytest.raises(ValueError, match="layout"):
        S.Params(layout="random").validate()


def test_score_answers_per_category():
    refs = [{"question_id": 0, "text": "rouge", "category": "color"}, {"question_id": 1, "text": "une", "category": "count"},
            {"question_id": 2, "text": "cercle", "category": "shape"}]
    score = S.score_answers({0: "Rouge.", 1: "deux"}, refs)
    assert score["count"] == 3 and score["accuracy"] == pytest.approx(1 / 3)
    assert score["per_category"] == {"color": 1.0, "count": 0.0, "shape": 0.0}


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_every_language(data, tokenizer_dir):
    import sentencepiece as spm

    root, _ = data
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    assert sp.get_piece_size() == 800
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id(), sp.piece_to_id("<image>")] == [0, 1, 2, 3, 4]
    covered = set()
    for lang, text in _all_texts(root):
        assert sp.decode(sp.encode(text)) == text
        covered.add(lang.code)
    assert covered == set(LANGUAGES)
    for odd in ("emoji 🙂 and tabs\tand  double  spaces ", "ελληνικά ไทย 한국어", "\nnewline first"):
        assert sp.decode(sp.encode(odd)) == odd  # byte fallback: unseen characters survive


def test_tokenizer_loads_with_autotokenizer_and_matches_sentencepiece(data, tokenizer_dir):
    from transformers import AutoTokenizer

    root, _ = data
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 3)
    assert hf.convert_tokens_to_ids("<image>") == 4 and len(hf) == 800
    texts = sorted({text for _, text in _all_texts(root)})
    assert train_tokenizer.check_hf_matches(tokenizer_dir, texts + ["\n" + t for t in texts[::10]]) == []
    for text in texts[::50]:
        assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text


def test_tokenizer_keeps_chinese_and_japanese_slot_words_apart(data, tokenizer_dir):
    """Without split words, BPE on the templated corpus learns whole CJK questions as one piece."""
    import sentencepiece as spm

    root, _ = data
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    words = re.compile("|".join(map(re.escape, sorted(tokenizer_split_words(), key=len, reverse=True))))
    checked = 0
    for lang, text in _all_texts(root):
        if lang.spaced:
            continue
        pieces = sp.encode(text, return_type="proto").pieces
        starts, ends = {p.begin for p in pieces}, {p.end for p in pieces}  # UTF-8 byte offsets
        for m in words.finditer(text):
            begin, end = (len(text[:i].encode()) for i in m.span())
            assert begin in starts and end in ends, (text, m.group(0), [p.piece for p in pieces])
            checked += 1
    assert checked > 100


def test_tokenizer_is_deterministic_and_reused(data, tokenizer_dir, tmp_path):
    root, _ = data
    paths = [os.path.join(root, "align.json"), os.path.join(root, "sft.json")]
    words = tokenizer_split_words()
    assert train_tokenizer.build_tokenizer(paths, tokenizer_dir, 800, split_words=words) == (tokenizer_dir, False)
    assert train_tokenizer.build_tokenizer(paths, tokenizer_dir, 800)[1]  # other split words: retrained
    train_tokenizer.build_tokenizer(paths, tokenizer_dir, 800, split_words=words)
    train_tokenizer.build_tokenizer(paths, str(tmp_path), 800, split_words=words)
    with open(os.path.join(tokenizer_dir, "tokenizer.model"), "rb") as a, open(tmp_path / "tokenizer.model", "rb") as b:
        assert a.read() == b.read()


# ----------------------------------------------------------------------------- CLIs


def test_make_demo_data_cli(tmp_path, capsys):
    out = str(tmp_path / "d")
    args = ["--out", out, "--num-train", "10", "--num-eval", "4", "--vocab-size", "500", "--quiet"]
    assert make_demo_data.main(args) == 0
    assert make_demo_data.main(args) == 0
    printed = capsys.readouterr().out
    assert "reusing dataset" in printed and "reusing tokenizer" in printed
    assert os.path.isfile(os.path.join(out, "tokenizer", "tokenizer_config.json"))
    for bad in (["--num-train", "0"], ["--image-size", "32"], ["--text-only-fraction", "1.5"], ["--layout", "x"], []):
        with pytest.raises(SystemExit) as e:
            make_demo_data.main((["--out", out] if bad else []) + bad)
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        make_demo_data.main(["--help"])
    assert e.value.code == 0


def test_train_tokenizer_cli_errors(tmp_path):
    for bad in ([], ["--json", str(tmp_path / "missing.json"), "--out", str(tmp_path)], ["--data", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            train_tokenizer.main(bad)
        assert e.value.code == 2


def test_no_answer_can_be_read_off_an_earlier_turn():
    """Multi-turn conversations must be answered from the image: a colour or shape answer never
    appears in the text before it (a colour question names the object's shape, and so on)."""
    multi = 0
    for i in range(400):
        rng = random.Random(i)
        scene, lang = S.random_scene(rng), LANGUAGES[pick(rng, list(LANGUAGES))]
        conv = S.sft_conversation(scene, lang, rng)
        multi += len(conv) > 2
        for t in range(1, len(conv), 2):
            answer, before = conv[t]["value"], " ".join(c["value"] for c in conv[:t])
            if answer in set(lang.colors) | set(getattr(lang, "colors_f", ())) | set(lang.shapes):
                assert answer not in before, (lang.code, conv)
    assert multi > 100
