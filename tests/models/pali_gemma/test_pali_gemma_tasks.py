"""PaliGemma task prompts and output parsers (`pali_gemma_tasks`) and the task
methods of `PaliGemmaCausalLM` (`caption`, `ocr`, `answer`, `detect`, `segment`).

The prompt strings are the documented prefixes (PaliGemma paper, the PaliGemma
prompt page and PaliGemma 2 mix model card, big_vision's transfer configs; see
the module docstring). The methods are checked twice on the tiny random preset:
with `generate` replaced by a recorder returning hand-written outputs (the
exact prompts and generation arguments sent, the parsing of what comes back),
and against a direct `generate` call with the documented prompt, post-processed.
"""

import numpy as np
import pytest

from keras_siglip.models.pali_gemma import (
    PaliGemmaMaskDecoder,
    answer_prompt,
    caption_prompt,
    detect_prompt,
    detections_to_text,
    ocr_prompt,
    parse_detect,
    parse_detections,
    parse_segment,
    parse_segmentation,
    parse_segmentation_tokens,
    parse_text,
    question_prompt,
    segment_prompt,
)

# -- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt, expected", [
    (caption_prompt(), "caption en"),
    (caption_prompt("fr"), "caption fr"),
    (caption_prompt("zh-TW"), "caption zh-TW"),  # codes are not checked against a list
    (caption_prompt(long=True), "describe en"),
    (caption_prompt("de", long=True), "describe de"),
    (ocr_prompt(), "ocr"),
    (answer_prompt("what is this"), "answer en what is this"),
    (answer_prompt("  what colour is the car?  ", lang="es"), "answer es what colour is the car?"),
    (question_prompt("a red car"), "question en a red car"),
    (detect_prompt("cat"), "detect cat"),
    (detect_prompt(["cat", "dog"]), "detect cat ; dog"),
    (detect_prompt(["a red circle", " two blue squares "]), "detect a red circle ; two blue squares"),
    (detect_prompt("cat;dog ;  bird"), "detect cat ; dog ; bird"),
    (segment_prompt("cat"), "segment cat"),
    (segment_prompt(("cat", "dog")), "segment cat ; dog"),
])
def test_prompts_are_the_documented_prefixes(prompt, expected):
    assert prompt == expected


@pytest.mark.parametrize("build, match", [
    (lambda: caption_prompt(""), "language code must be one non-empty token"),
    (lambda: caption_prompt("e n"), "language code must be one non-empty token"),
    (lambda: caption_prompt("en\n"), "language code must be one non-empty token"),
    (lambda: caption_prompt(None), "language code must be one non-empty token"),
    (lambda: answer_prompt(""), "question is empty"),
    (lambda: answer_prompt("   "), "question is empty"),
    (lambda: answer_prompt("what\nis this"), "question must not contain a newline"),
    (lambda: answer_prompt("what is this", lang="en us"), "language code"),
    (lambda: question_prompt(""), "answer is empty"),
    (lambda: detect_prompt(["cat;dog"]), "object name must not contain ';'"),
    (lambda: segment_prompt(["cat", "a ; b"]), "object name must not contain ';'"),
    (lambda: detect_prompt([]), "at least one object"),
    (lambda: detect_prompt(["cat", " "]), "object name is empty"),
    (lambda: detect_prompt("cat ; "), "object name is empty"),
    (lambda: segment_prompt([3]), "object name must be a string"),
])
def test_prompt_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# -- parsers on hand-written outputs ------------------------------------------------------------

SEG_CODES = list(range(3, 19))
SEGMENT_TEXT = ("<loc0102><loc0204><loc0716><loc0818>" + "".join(f"<seg{c:03d}>" for c in SEG_CODES)
                + " cat ; <loc0000><loc0000><loc0511><loc0511> dog")


@pytest.mark.parametrize("output, prompt, expected", [
    ("a cat on a mat", None, "a cat on a mat"),
    ("  a cat on a mat \n", None, "a cat on a mat"),
    (b"un chat", None, "un chat"),
    (None, None, ""),
    ("a cat<eos><pad><pad>", None, "a cat"),
    ("a cat<eos>junk after eos", None, "a cat"),
    ("<image><image><bos>caption en\na cat<eos><pad>", "caption en", "a cat"),  # HF decode of the whole sequence
    ("<bos>answer en what is this\n2", "answer en what is this", "2"),
    ("caption en\na cat", None, "caption en\na cat"),  # no prompt given: nothing is taken for an echo
    ("caption fr\na cat", "caption en", "caption fr\na cat"),  # another prompt's text is kept
])
def test_parse_text(output, prompt, expected):
    assert parse_text(output, prompt) == expected


def test_parse_detect_cleans_then_parses():
    boxes = np.array([[0.1, 0.2, 0.7, 0.8], [0.0, 0.0, 0.5, 0.5]], np.float32)
    text = detections_to_text(boxes, ["cat", "dog"])
    found = parse_detect(f"<bos>detect cat ; dog\n{text}<eos><pad>", image_size=(20, 30), prompt="detect cat ; dog")
    assert found.labels == ["cat", "dog"] and found.text == text
    np.testing.assert_allclose(found.boxes, boxes * [20, 30, 20, 30], atol=30 / 1023)
    expected = parse_detections(text)
    np.testing.assert_array_equal(parse_detect(text).boxes, expected.boxes)


def test_parse_segment_without_and_with_masks():
    objects = parse_segment(SEGMENT_TEXT + "<eos>")
    assert [o["label"] for o in objects] == ["cat", "dog"]
    np.testing.assert_array_equal(objects[0]["codes"], SEG_CODES)
    assert objects[1]["codes"] is None  # detection-style object: box, no mask codes
    np.testing.assert_allclose(objects[0]["box"], np.array([102, 204, 716, 818]) / 1023, rtol=1e-6)
    assert set(objects[0]) == {"box", "codes", "label"}

    decoder = PaliGemmaMaskDecoder(embedding_dim=8)
    with_masks = parse_segment(SEGMENT_TEXT, decoder=decoder, image_size=(20, 30))
    expected = parse_segmentation(SEGMENT_TEXT, decoder, 20, 30)
    assert [o["label"] for o in with_masks] == ["cat", "dog"]
    assert with_masks[0]["mask"].shape == (20, 30) and with_masks[1]["mask"] is None
    assert with_masks[0]["box_pixels"] == (1, 5, 13, 23)  # int(v * size), big_vision's rounding
    np.testing.assert_array_equal(with_masks[0]["mask"], expected[0]["mask"])
    np.testing.assert_allclose(with_masks[0]["mask_logits"], expected[0]["mask_logits"])
    # token ids go straight to the token parser
    ids = [256_000 + 102, 256_000 + 204, 256_000 + 716, 256_000 + 818] + [257_024 + c for c in SEG_CODES]
    [from_ids] = parse_segment(np.array(ids))
    np.testing.assert_array_equal(from_ids["codes"], SEG_CODES)
    assert len(parse_segmentation_tokens("not a segmentation")) == 0 == len(parse_segment("no objects"))
    with pytest.raises(ValueError, match="pass image_size"):
        parse_segment(SEGMENT_TEXT, decoder=decoder)


# -- the task methods on the tiny random preset --------------------------------------------------

HEIGHT, WIDTH = 20, 30
TOKENS = 8


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from tests.helpers import tiny_pali_gemma_preset

    model = tiny_pali_gemma_preset(tmp_path_factory.mktemp("pali_gemma") / "preset", seed=0)
    model.preprocessor.sequence_length = 32  # the longest prompt here is not cut
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(3).integers(0, 256, (2, HEIGHT, WIDTH, 3), dtype=np.uint8)  # raw, non-square


@pytest.fixture
def recorded(lm, monkeypatch):
    """Replaces `lm.generate` by a recorder: `calls` gets `(prompts, kwargs)`,
    `outputs` (set by the test) is returned."""
    state = {"calls": [], "outputs": None}

    def generate(images, prompts, **kwargs):
        state["calls"].append((list(prompts), kwargs))
        return list(state["outputs"])

    monkeypatch.setattr(lm, "generate", generate)
    return state


@pytest.mark.parametrize("run, prompts, kwargs", [
    (lambda lm, x: lm.caption(x), ["caption en"] * 2, {"max_new_tokens": 32}),
    (lambda lm, x: lm.caption(x, lang="de", long=True), ["describe de"] * 2, {"max_new_tokens": 256}),
    (lambda lm, x: lm.ocr(x, num_beams=3, strategy="beam"), ["ocr"] * 2,
     {"max_new_tokens": 128, "num_beams": 3, "strategy": "beam"}),
    (lambda lm, x: lm.answer(x, "what is this"), ["answer en what is this"] * 2, {"max_new_tokens": 32}),
    (lambda lm, x: lm.answer(x, ["what is this", "how many"], lang="fr", max_new_tokens=5),
     ["answer fr what is this", "answer fr how many"], {"max_new_tokens": 5}),
])
def test_text_task_methods_send_the_prompt_and_clean_the_output(lm, images, recorded, run, prompts, kwargs):
    recorded["outputs"] = ["  a cat \n", ""]
    assert run(lm, images) == ["a cat", ""]
    assert recorded["calls"] == [(prompts, kwargs)]


def test_detect_and_segment_send_the_prompt_and_parse_the_output(lm, images, recorded):
    boxes = np.array([[0.1, 0.2, 0.7, 0.8]], np.float32)
    recorded["outputs"] = [detections_to_text(boxes, ["a red circle"]), "garbage"]
    found = lm.detect(images, ["a red circle", "two blue squares"], coordinates="pixels")
    assert recorded["calls"][-1] == (["detect a red circle ; two blue squares"] * 2,
                                     {"max_new_tokens": 64, "output_grammar": "detect"})
    assert found[0].labels == ["a red circle"] and len(found[1]) == 0
    np.testing.assert_allclose(found[0].boxes, boxes * [HEIGHT, WIDTH, HEIGHT, WIDTH], atol=WIDTH / 1023)
    [normalized] = lm.detect(images[0], "a red circle", output_grammar=None)  # one image: a list of one
    assert recorded["calls"][-1] == (["detect a red circle"], {"max_new_tokens": 64, "output_grammar": None})
    np.testing.assert_allclose(normalized.boxes, boxes, atol=1 / 1023)

    decoder = PaliGemmaMaskDecoder(embedding_dim=8)
    recorded["outputs"] = [SEGMENT_TEXT, ""]
    segments = lm.segment(images, "cat ; dog", mask_decoder=decoder, max_new_tokens=48)
    assert recorded["calls"][-1] == (["segment cat ; dog"] * 2, {"max_new_tokens": 48, "output_grammar": "segment"})
    assert [o["label"] for o in segments[0]] == ["cat", "dog"] and segments[1] == []
    np.testing.assert_array_equal(segments[0][0]["mask"], parse_segmentation(SEGMENT_TEXT, decoder, HEIGHT,
                                                                             WIDTH)[0]["mask"])
    assert segments[0][0]["mask"].shape == (HEIGHT, WIDTH)


def test_task_methods_reject_bad_arguments_before_generating(lm, images, recorded):
    cases = [
        (lambda: lm.answer(images, ""), "question is empty"),
        (lambda: lm.caption(images, lang="e n"), "language code"),
        (lambda: lm.detect(images, ["cat;dog"]), "must not contain ';'"),
        (lambda: lm.segment(images, []), "at least one object"),
        (lambda: lm.detect(images, "cat", coordinates="boxes"), "`coordinates` must be"),
        (lambda: lm.ocr(images, return_token_ids=True), "return parsed outputs"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert recorded["calls"] == []


@pytest.mark.parametrize("task", ["caption", "describe", "ocr", "answer", "answers", "detect", "segment"])
def test_task_methods_equal_generate_with_the_documented_prompt(lm, images, task):
    """Each method equals `generate` with the documented prompt string,
    post-processed with the task's parser (the real model, no recorder)."""
    decoder = PaliGemmaMaskDecoder(embedding_dim=8)
    size = (HEIGHT, WIDTH)
    cases = {
        "caption": (lambda: lm.caption(images, max_new_tokens=TOKENS), ["caption en"] * 2, None, parse_text),
        "describe": (lambda: lm.caption(images, long=True, max_new_tokens=TOKENS), ["describe en"] * 2, None,
                     parse_text),
        "ocr": (lambda: lm.ocr(images, max_new_tokens=TOKENS), ["ocr"] * 2, None, parse_text),
        "answer": (lambda: lm.answer(images, "what is this", max_new_tokens=TOKENS),
                   ["answer en what is this"] * 2, None, parse_text),
        "answers": (lambda: lm.answer(images, ["what is this", "a red circle"], max_new_tokens=TOKENS),
                    ["answer en what is this", "answer en a red circle"], None, parse_text),
        "detect": (lambda: lm.detect(images, ["a red circle", "two blue squares"], max_new_tokens=TOKENS,
                                     coordinates="pixels"),
                   ["detect a red circle ; two blue squares"] * 2, "detect",
                   lambda text: parse_detections(text, image_size=size)),
        "segment": (lambda: lm.segment(images, "a red circle", mask_decoder=decoder, max_new_tokens=24),
                    ["segment a red circle"] * 2, "segment",
                    lambda text: parse_segmentation(text, decoder, *size)),
    }
    run, prompts, grammar, parse = cases[task]
    ours = run()
    texts = lm.generate(images, prompts, max_new_tokens=24 if task == "segment" else TOKENS, output_grammar=grammar)
    expected = [parse(text) for text in texts]
    assert len(ours) == len(expected) == 2
    if task == "detect":
        for a, b in zip(ours, expected):
            assert a.labels == b.labels and a.text == b.text
            np.testing.assert_array_equal(a.boxes, b.boxes)
    elif task == "segment":
        for a, b in zip(ours, expected):
            assert [o["label"] for o in a] == [o["label"] for o in b]
            assert [o["box_pixels"] for o in a] == [o["box_pixels"] for o in b]
            for x, y in zip(a, b):
                assert (x["mask"] is None) == (y["mask"] is None)
                if x["mask"] is not None:
                    np.testing.assert_array_equal(x["mask"], y["mask"])
    else:
        assert ours == expected
