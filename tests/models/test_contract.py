"""Every backbone and task class of `keras_siglip.models` runs the shared model
contract (`tests/contract.py`): one test per class builds its tiny model once
and runs each applicable check. The table below names what does not apply to a
class, and why."""

import inspect

import keras
import pytest
from keras_hub.models import Backbone, Task

from keras_siglip import models
from tests.contract import CHECKS, cases, run_contract

CASES = cases()

# case -> {check: why it does not apply}. Every other check of `CHECKS` runs
# (`saved_model` on the TensorFlow backend only: the export runs there).
NO_LOSS = "no loss of its own: it trains inside a task or two-tower model (their cases train it)"
TASK_EXPORT = "a task: the SavedModel export serves backbones (this task's forward is its backbone's)"
TRAINER = "a trainer (training-only wrapper): its product, `.backbone`, is the siglip_backbone case"
NO_OWN_LAYERS = "no quantizable layer of its own: quantize() reaches its backbone's, checked in that case"
EXCLUDED = {
    "siglip_vision_encoder": {"train": NO_LOSS},
    "siglip_text_encoder": {"train": NO_LOSS,
                            "shapes": "fixed text length: a learned position table of sequence_length rows"},
    "cappa_backbone": {"train": NO_LOSS},
    "lit_decoder_backbone": {"train": NO_LOSS},
    "pali_gemma_backbone": {"train": NO_LOSS},
    "siglip_image_classifier": {"saved_model": TASK_EXPORT},
    "siglip_zero_shot_classifier": {"saved_model": TASK_EXPORT,
                                    "train": "does not train: fixed class embeddings, no loss"},
    "cappa_captioner": {"saved_model": TASK_EXPORT, "int8": NO_OWN_LAYERS},
    "locca_captioner": {"saved_model": TASK_EXPORT, "int8": NO_OWN_LAYERS},
    "lit_decoder": {"saved_model": TASK_EXPORT, "int8": NO_OWN_LAYERS},
    "pali_gemma_causal_lm": {"saved_model": TASK_EXPORT, "int8": NO_OWN_LAYERS},
    "siglip2_pretrainer": {"saved_model": TASK_EXPORT, "int8": TRAINER},
    "active_curation_trainer": {"saved_model": TASK_EXPORT, "int8": TRAINER},
}

def test_every_backbone_and_task_class_has_a_case():
    classes = {obj for obj in vars(models).values()
               if inspect.isclass(obj) and issubclass(obj, (Backbone, Task))}
    assert classes == {case.cls for case in CASES.values()}
    for name, checks in EXCLUDED.items():
        assert name in CASES and set(checks) <= set(CHECKS), name
    for name, case in CASES.items():  # what applies has something to run
        excluded = EXCLUDED.get(name, {})
        assert all(isinstance(reason, str) and reason for reason in excluded.values()), name
        assert "shapes" in excluded or case.shapes, f"{name}: no shape checks and no reason why"
        assert "train" in excluded or (case.train_data and case.freeze), f"{name}: nothing to train"


@pytest.mark.parametrize("name", sorted(CASES))
def test_contract(name, tmp_path):
    excluded = EXCLUDED.get(name, {})
    applicable = [check for check in CHECKS if check not in excluded]
    failures = run_contract(name, CASES[name], applicable, tmp_path)
    report = "\n".join(f"{check}: {type(error).__name__}: {error}" for check, error in failures.items())
    assert not failures, f"{name} breaks the contract on {keras.backend.backend()}:\n{report}"
