"""Bad rows and bad calls fail at once with a clear message (issue 12, cases 7, 8 and 10)."""

import pytest
from datasets import Dataset

from hf_unlearn import GAConfig, GATrainer, SaliencyMaskConfig, UnlearnDataCollator, compute_saliency_mask
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.toy import toy_portrait

CANARY = "Zebulon Quartermaine"  # row text that must never appear in a message


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


def make_trainer(llava, tmp_path, forget, retain=None, **kw):
    model, processor = llava
    args = GAConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", max_steps=1, **kw)
    return GATrainer(model=model, args=args, train_dataset=forget, retain_dataset=retain, processing_class=processor)


@pytest.mark.parametrize("bad, problem", [
    (None, r"`answer` must be a non-empty string, got NoneType"),
    ([CANARY], r"`answer` must be a non-empty string, got list"),
    ({"text": CANARY}, r"`answer` must be a non-empty string, got dict"),
    ("", r"`answer` is an empty string"),
    ("   ", r"`answer` is an empty string"),
])
def test_bad_answers_are_refused_naming_the_row(bad, problem, llava, tmp_path):
    rows = [{"image": None, "question": f"Where does {CANARY} live?", "answer": "Paris"},
            {"image": None, "question": f"What is the job of {CANARY}?", "answer": bad}]
    forget = Dataset.from_list(rows) if bad is None or isinstance(bad, str) else rows  # lists/dicts: plain rows
    with pytest.raises(ValueError, match=rf"^forget set row 1: {problem}") as caught:
        make_trainer(llava, tmp_path, forget)
    assert CANARY not in str(caught.value)
    with pytest.raises(ValueError, match=rf"^Row 1 of this batch: {problem}"):  # the collator checks too
        UnlearnDataCollator(llava[1])(list(rows))


def test_image_question_without_image_is_refused_but_text_rows_in_a_mixed_set_train(llava, tmp_path):
    vqa = [{"kind": "vqa", "image": toy_portrait(i), "question": "Who is this?", "answer": name}
           for i, name in enumerate(["Alice Smith", "Bob Jones"])]
    qa = [{"kind": "qa", "image": None, "question": f"What is the job of {CANARY}?", "answer": "pilot"}]
    retain = Dataset.from_list(vqa + qa)  # a mixed retain set: text-only rows are normal
    trainer = make_trainer(llava, tmp_path, Dataset.from_list(vqa), retain)
    trainer.train()
    assert trainer.state.global_step == 1
    broken = Dataset.from_list(vqa + [{**qa[0], "kind": "vqa"}])  # an image question that lost its image
    with pytest.raises(ValueError, match=r"^retain set row 2: is an image question \(kind='vqa'\) without an image.*"
                                         r"set kind='qa' to train it as text on purpose") as caught:
        make_trainer(llava, tmp_path, Dataset.from_list(vqa), broken)
    assert CANARY not in str(caught.value)
    conversation = [{"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who?"}]},
                                  {"role": "assistant", "content": "Alice Smith"}]}]
    with pytest.raises(ValueError, match=r"^forget set row 0: `messages` marks 1 image\(s\) .* but the row has 0 "
                                         r"\(an image question without its image\)"):
        make_trainer(llava, tmp_path, conversation)


class _NoReading(list):
    """A dataset whose rows must not be read (the call is wrong before any row matters)."""

    def __iter__(self):
        raise AssertionError("a row was read")

    __getitem__ = __iter__


def test_compute_saliency_mask_checks_its_arguments_before_reading_rows(llava):
    model, processor = llava
    forget = _NoReading([{"question": "q", "answer": "a"}])
    retain_ds = Dataset.from_list([{"image": None, "question": "q", "answer": "a"}])
    collator = UnlearnDataCollator(processor)
    with pytest.raises(TypeError, match=r"preserve_datasets must map preserve-set names to datasets, got a single "
                                        r"Dataset\..*pass e.g. preserve_datasets=\{'retain': retain_ds\}"):
        compute_saliency_mask(model, SaliencyMaskConfig(), forget, retain_ds, collator)
    with pytest.raises(TypeError, match=r"preserve_datasets must map preserve-set names to datasets, got a "
                                        r"collator\..*and the collator as data_collator"):
        compute_saliency_mask(model, SaliencyMaskConfig(), forget, collator, None)
    with pytest.raises(TypeError, match=r"data_collator must be a callable .* got dict"):
        compute_saliency_mask(model, SaliencyMaskConfig(), forget, {"retain": retain_ds}, {"retain": retain_ds})
    with pytest.raises(ValueError, match=r"^preserve set 'retain' row 0: `answer` is an empty string"):
        compute_saliency_mask(model, SaliencyMaskConfig(), [{"question": "q", "answer": "a"}],
                              {"retain": [{"question": "q", "answer": ""}]}, collator)


def test_retain_set_for_a_method_that_ignores_it_warns(llava, tmp_path):
    rows = Dataset.from_list([{"image": None, "question": "q?", "answer": "a"}])
    with pytest.warns(UserWarning, match=r"`retain_dataset` is given but GATrainer has retain_loss_type='none': the "
                                         r"retain rows are not used"):
        trainer = make_trainer(llava, tmp_path, rows, rows, retain_loss_type="none")
    assert trainer.pairing.retain is None
