"""PaliGemma task prompts (prefixes) and their output parsers.

The prefixes PaliGemma 1 / 2 were trained on (pt and mix checkpoints):

    task      builder                             prefix
    caption   caption_prompt("en")                "caption en"
    long      caption_prompt("en", long=True)     "describe en"
    ocr       ocr_prompt()                        "ocr"
    answer    answer_prompt("what is this")       "answer en what is this"
    question  question_prompt("a cat")            "question en a cat"
    detect    detect_prompt(["cat", "dog"])       "detect cat ; dog"
    segment   segment_prompt(["cat", "dog"])      "segment cat ; dog"

Sources: the PaliGemma paper (arXiv 2407.07726, pretraining mixture: `caption
{lang}`, `ocr`, `answer en {question}`, `question {lang} {English answer}`,
`detect {thing} ; {thing} ; ...`, `segment {thing} ; {thing} ; ...`); the
PaliGemma prompt page (ai.google.dev/gemma/docs/paligemma/prompt-system-instructions)
and the PaliGemma 2 mix model card (huggingface.co/google/paligemma2-*-mix-*),
which list `caption {lang}` (short, COCO-like), `describe {lang}` (longer,
more descriptive: the mix models' long captions), `ocr`, `answer {lang}
{question}`, `question {lang} {answer}`, `detect {object} ; {object}` and
`segment {object}`; big_vision's transfer configs
(`configs/proj/paligemma/transfers/cococap.py`: `caption en`, `coco35l.py`:
`caption {lang}`, `vqav2.py` / `ocrvqa.py`: `answer en {question}`).

The strings are the prefix only: the "\\n" separator the docs show after a
prompt is added by `PaliGemmaCausalLMPreprocessor`, tokenized on its own as
big_vision's `septok` (so a prompt must not contain a newline). Builders
reject what would change the prefix's structure: a language code must be one
token (non-empty, no whitespace); an object name must be non-empty and free of
";" (the separator of the object list); questions and answers non-empty.

`PaliGemmaCausalLM.generate` returns only the generated text, cut at EOS, so
`parse_text` has nothing to remove there; it also cleans text decoded
elsewhere (HF `batch_decode(skip_special_tokens=False)`: leading `<image>` /
`<bos>`, the prompt echo, `<eos>` and `<pad>`). Detection and segmentation
outputs go through `parse_detections` / `parse_segmentation(_tokens)`.
"""

import re

from keras_siglip.models.pali_gemma.pali_gemma_outputs import parse_detections
from keras_siglip.models.pali_gemma.pali_gemma_segmentation import parse_segmentation, parse_segmentation_tokens

SEPARATOR = "\n"  # as pali_gemma_tokenizer.SEPARATOR (that module imports the backbone)
OBJECT_SEPARATOR = " ; "
_LEADING_SPECIAL = re.compile(r"^(?:<image>|<bos>)+")


def _check_lang(lang):
    if not isinstance(lang, str) or not lang or any(c.isspace() for c in lang):
        raise ValueError(f"A language code must be one non-empty token without spaces (e.g. 'en'); got {lang!r}.")
    return lang


def _check_text(text, what):
    if not isinstance(text, str):
        raise ValueError(f"The {what} must be a string; got {type(text).__name__}.")
    text = text.strip()
    if not text:
        raise ValueError(f"The {what} is empty.")
    if SEPARATOR in text:
        raise ValueError(f"The {what} must not contain a newline: '\\n' ends the prompt; got {text!r}.")
    return text


def caption_prompt(lang="en", long=False):
    """`"caption {lang}"` (short caption), or `"describe {lang}"` with `long`."""
    return f"{'describe' if long else 'caption'} {_check_lang(lang)}"


def ocr_prompt():
    """`"ocr"`: the text in the image, in reading order."""
    return "ocr"


def answer_prompt(question, lang="en"):
    """`"answer {lang} {question}"` (the question stripped of surrounding spaces)."""
    return f"answer {_check_lang(lang)} {_check_text(question, 'question')}"


def question_prompt(answer, lang="en"):
    """`"question {lang} {answer}"`: a question whose answer is `answer`
    (pretrained checkpoints)."""
    return f"question {_check_lang(lang)} {_check_text(answer, 'answer')}"


def _object_list(objects):
    """A `"cat ; dog"` string or a list of names -> `"cat ; dog"`."""
    if isinstance(objects, str):
        names = objects.split(";")  # the prompt's own syntax
    else:
        names = list(objects)
        for name in names:
            if isinstance(name, str) and ";" in name:
                raise ValueError(f"An object name must not contain ';' (it separates objects); got {name!r}.")
    if not names:
        raise ValueError("Name at least one object.")
    return OBJECT_SEPARATOR.join(_check_text(name, "object name") for name in names)


def detect_prompt(objects):
    """`"detect {object} ; {object}"`.

    Args:
        objects: a list of names, or one string in the prompt's syntax
            (`"cat ; dog"`; the names are split on ";" and re-joined with
            `" ; "`).
    """
    return f"detect {_object_list(objects)}"


def segment_prompt(objects):
    """`"segment {object} ; {object}"` (`objects` as `detect_prompt`)."""
    return f"segment {_object_list(objects)}"


def parse_text(output, prompt=None):
    """The answer of a text task (caption, describe, ocr, answer, question).

    Args:
        output: generated text (`str` or UTF-8 `bytes`).
        prompt: the prompt, to remove an echo `prompt + "\\n"` at the start
            (decoders that return the whole sequence); `generate` has none.

    Returns:
        The text without leading `<image>` / `<bos>` tokens, the prompt
        echo, anything from the first `<eos>` on and `<pad>` tokens, with
        surrounding whitespace stripped.
    """
    if isinstance(output, bytes):
        output = output.decode("utf-8", errors="replace")
    text = "" if output is None else str(output)
    text = _LEADING_SPECIAL.sub("", text).split("<eos>", 1)[0].replace("<pad>", "")
    if prompt is not None and text.startswith(prompt + SEPARATOR):
        text = text[len(prompt) + len(SEPARATOR):]
    return text.strip()


def parse_detect(output, image_size=None, prompt=None):
    """A `detect` output -> `Detections`: `parse_detections(parse_text(output,
    prompt), image_size)` (normalised boxes, or pixels of `image_size =
    (height, width)`)."""
    return parse_detections(parse_text(output, prompt), image_size=image_size)


def parse_segment(output, decoder=None, image_size=None, prompt=None):
    """A `segment` output -> one dict per well-formed object.

    Args:
        output: text (cleaned with `parse_text`) or token ids.
        decoder: a `PaliGemmaMaskDecoder` to decode the masks, or None.
        image_size: `(height, width)` the masks and `"box_pixels"` refer to;
            needed with a decoder.

    Returns:
        With `image_size`: `parse_segmentation`'s dicts (`"box"`,
        `"box_pixels"`, `"label"`, `"codes"`, `"mask_logits"`, `"mask"`);
        without: `parse_segmentation_tokens`'s (`"box"`, `"codes"`, `"label"`).
    """
    if output is None or isinstance(output, (str, bytes)):
        output = parse_text(output, prompt)
    if image_size is None:
        if decoder is not None:
            raise ValueError("Masks are pasted at the image's size: pass image_size=(height, width) with a decoder.")
        return parse_segmentation_tokens(output)
    height, width = image_size
    return parse_segmentation(output, decoder, height, width)
