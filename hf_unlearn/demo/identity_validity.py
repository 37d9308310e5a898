"""Benchmark v3's validity checks (issue 25, item 6) and identity-mediation measurement (item 1), as numbers.

Before the instrument judges methods it must reproduce what is known at 7B (MLLMU-Bench, CLEAR, MMUnlearner):

1. **Vanilla trained to the criterion**: 4-way accuracy >= 0.95 on every split it was trained on.
2. **Oracle**: forget-VQA within 0.10 of chance (0.25) and forget-QA >= 0.95 (it knows the forget people in text).
3. **Image unlearning damages text knowledge**: plain GA on forget-VQA (no stop rule), at the first checked budget
   where its forget-VQA accuracy reaches the oracle's, lowers the forget people's text-answer probability by >= 30%
   relative to the vanilla's, and more than the other people's: the text-damage ratio (forget-QA NLL change over
   retain-QA NLL change) above 1 with 95% confidence (a collapse of everyone's text alike is not the phenomenon).
4. **The ideal is reachable**: a vision-side-only update (the projector, the language model frozen) distilled
   toward the oracle reaches the oracle's forget-VQA and keeps forget-QA >= 0.95.

Identity mediation (item 1): a counterfactual text edit. For ``num_people`` retain people, each image fact is given a
new value (a wrong option of that image question) and the language model alone is fine-tuned on the edited named
text questions (the other people's text questions kept as they are) until the edits are learnt; the share of the
edited people's image questions whose chosen option moves to the new value is the share of image answers that go
through the identity (the face is only recognised; the fact is read from the language model). An image pathway that
stored facts on its own would keep the old answers.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback, set_seed

from ..data.identity_benchmark import (
    PERSON_SLOT,
    TEXT_TRAINING_SPLITS,
    VANILLA_IMAGE_SPLITS,
    identity_features,
    image_training_set,
)
from ..data.schema import rows_to_dataset
from ..features import memoized_image_features
from .identity import (
    IdentityReferences,
    StageRecipe,
    accuracy,
    answer_nll,
    answer_probability,
    collate_all,
    fit,
    method_data,
    trainable_parts,
)

CHANCE = 0.25
# ga_min_text_damage_lower_bound: whether GA's damage is specific, reported beside check 3 and not counted in it. The
# issue asks only for the 30% drop; a GA that reaches the oracle by wrecking everyone's text alike passes that while
# showing nothing about the forget people's, so we also report whether forget-QA's NLL rose more than retain-QA's,
# beyond the questions' noise (the lower end of the text-damage ratio's 95% interval above 1). Not a pass condition:
# the issue does not ask for it, and at 7B GA is not very specific either (MLLMU-Bench, LLaVA-1.5-7B, image questions,
# a third-party table: forget / retain accuracy -23% / -17%, ROUGE-L -31% / -15%); identity mediation (measured
# separately) is what shows the image answers go through the person's text facts.
THRESHOLDS = dict(vanilla_min_accuracy=0.95, oracle_max_distance_to_chance=0.10, oracle_min_forget_qa=0.95,
                  ga_min_relative_probability_drop=0.30, ga_min_text_damage_lower_bound=1.0,
                  vision_only_min_forget_qa=0.95)

__all__ = ["CHANCE", "THRESHOLDS", "damage_is_specific", "ga_at_oracle_forgetting", "ga_check", "identity_mediation",
           "validity_checks", "text_damage", "text_prior_accuracy", "vision_only_to_oracle"]


def ga_check(drop: float | None, damage_lower_bound: float | None, t: dict = THRESHOLDS) -> tuple[bool, bool]:
    """Check 3 from GA's relative forget-QA probability drop (``passed``: at least 30%) and, reported beside it, from
    the lower end of the text-damage ratio's 95% interval (``specific``): ``(specific, passed)``. Reports recompute
    it from the stored numbers, so a table always follows the check as the code defines it."""
    return damage_is_specific(damage_lower_bound, t), drop is not None and drop >= t["ga_min_relative_probability_drop"]


def damage_is_specific(damage_lower_bound: float | None, t: dict = THRESHOLDS) -> bool:
    """Whether GA's text damage hit the forget people's text more than the others', beyond the questions' noise."""
    return damage_lower_bound is not None and damage_lower_bound > t["ga_min_text_damage_lower_bound"]


def text_damage(vanilla: dict[str, np.ndarray], after: dict[str, np.ndarray], seed: int = 0,
                level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The text-damage ratio, mean forget-QA NLL change over mean retain-QA NLL change (per question, from the
    vanilla), and its percentile bootstrap interval over the questions of each split (scipy.stats.bootstrap, 2000
    resamples). Inf where retain-QA did not get worse."""
    from scipy.stats import bootstrap

    forget = after["forget_qa"] - vanilla["forget_qa"]
    retain = after["retain_qa"] - vanilla["retain_qa"]

    def ratio(f, r, axis=-1):
        denominator = r.mean(axis=axis)
        return np.where(denominator > 0, f.mean(axis=axis) / np.where(denominator > 0, denominator, 1.0), np.inf)

    with np.errstate(invalid="ignore"):  # infinite replicates (retain-QA not worse) make scipy's standard error nan
        result = bootstrap((forget, retain), ratio, paired=False, vectorized=True, n_resamples=2000,
                           confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return float(ratio(forget, retain)), (float(low), float(high))


def text_prior_accuracy(benchmark, split: str = "forget_vqa",
                        known: tuple[str, ...] = ("forget_qa", "retain_qa", "holdout_qa", "validation_qa")) -> float:
    """Accuracy on ``split`` of a guess that ignores the face: for each question, the option held by the most people
    among everyone the language model knows from text (ties split): what an oracle that reads an unseen face as
    "anyone" can reach without recognising it. The person's own value is among the counted ones, so with uniformly
    drawn distractors this guess scored 0.36-0.53 at the 9 validity seeds; with distractors as common as the answer
    (``identity_benchmark._as_common_as``; the nearest counts where too few are) 0.30-0.39."""
    from collections import Counter, defaultdict

    templates = {tuple(q.split(PERSON_SLOT, 1)) for q in benchmark[split]["question"] if PERSON_SLOT in q}
    held: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for name in known:
        for question, answer in zip(benchmark[name]["question"], benchmark[name]["answer"]):
            for before, after in templates:
                if question.startswith(before) and question.endswith(after):
                    held[(before, after)][answer] += 1
    scores = []
    for question, options, answer in zip(benchmark[split]["question"], benchmark[split]["options"],
                                         benchmark[split]["answer"]):
        counts = held[tuple(question.split(PERSON_SLOT, 1))]
        best = max(counts[o] for o in options)
        winners = [o for o in options if counts[o] == best]
        scores.append((answer in winners) / len(winners))
    return float(np.mean(scores))


def _split_accuracies(model, processor, benchmark, names) -> dict[str, float]:
    return {n: accuracy(model, processor, benchmark[n]) for n in names if len(benchmark.get(n, [])) > 0}


class _ProbeCallback(TrainerCallback):
    """Every ``every`` steps: forget-VQA accuracy; at the first probe at or below ``target`` record the model's
    forget-QA answer probability and accuracy and stop."""

    def __init__(self, processor, benchmark, target: float, every: int):
        self.processor, self.benchmark, self.target, self.every = processor, benchmark, target, every
        self.trace: list[dict[str, float]] = []
        self.reached: dict[str, float] | None = None
        self.nll: dict[str, np.ndarray] | None = None  # per question, at the reached probe

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        was_training = model.training
        model.eval()
        point = {"step": state.global_step,
                 "forget_vqa_acc": accuracy(model, self.processor, self.benchmark["forget_vqa"])}
        if point["forget_vqa_acc"] <= self.target:
            self.nll = {n: answer_nll(model, self.processor, self.benchmark[n]) for n in ("forget_qa", "retain_qa")}
            point.update(forget_qa_prob=float(np.exp(-self.nll["forget_qa"]).mean()),
                         forget_qa_acc=accuracy(model, self.processor, self.benchmark["forget_qa"]),
                         retain_qa_prob=float(np.exp(-self.nll["retain_qa"]).mean()),
                         retain_vqa_acc=accuracy(model, self.processor, self.benchmark["retain_vqa"]))
            self.reached = point
            control.should_training_stop = True
        self.trace.append(point)
        model.train(was_training)


def ga_at_oracle_forgetting(refs: IdentityReferences, target: float, learning_rate: float = 1e-4,
                            batch_size: int = 8, max_steps: int = 200, every: int = 1, seed: int = 0,
                            method: str = "ga", parts: tuple[str, ...] = ("language_model",)) -> dict[str, Any]:
    """Plain GA (the registered ``method``, no stop rule, no holdout) from the vanilla on the official protocol's
    forget set; the forget-QA answer probability at the first probe (every ``every`` steps; every step by default:
    at 5e-4 GA reaches the oracle within 5-10 steps, so a coarser probe measures a later budget than the issue's
    "first reaches") whose forget-VQA accuracy is <= ``target``. ``parts`` train: by default the language model only, as MLLMU-Bench's GA baselines
    (LoRA on the language model's linear layers, vision tower and projector frozen) and CLEAR
    (``freeze_vision_module``) run it."""
    import tempfile

    from ..trainers.registry import get_method

    model = copy.deepcopy(refs.vanilla)
    trainable_parts(model, parts)
    data = method_data(refs.benchmark)
    data.holdout = None  # no stop rule
    spec = get_method(method)
    probe = _ProbeCallback(refs.processor, refs.benchmark, target, every)
    set_seed(seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hf_unlearn_v3_ga_") as tmp:
        args = spec.config(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=max_steps,
                           learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                           weight_decay=0.0, save_strategy="no", report_to="none", disable_tqdm=True,
                           logging_strategy="no", seed=seed, data_seed=seed, dataloader_num_workers=0,
                           dataloader_pin_memory=False)
        trainer = spec.build_trainer(model, refs.processor, data, args)
        trainer.add_callback(probe)
        with memoized_image_features(model):
            trainer.train()
    return {"method": method, "learning_rate": learning_rate, "parts": list(parts), "reached": probe.reached,
            "trace": probe.trace, "nll": probe.nll, "seconds": time.perf_counter() - start}


def _answer_logits_kl(model, teacher_logprobs, batch) -> torch.Tensor:
    """KL(teacher || model) over the answer positions of ``batch`` (labels != -100), mean over positions."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    positions = batch["labels"][:, 1:] != -100
    logp = torch.log_softmax(logits[positions], dim=-1)
    return torch.nn.functional.kl_div(logp, teacher_logprobs, log_target=True, reduction="batchmean")


def vision_only_to_oracle(refs: IdentityReferences, target: float, learning_rate: float = 1e-3, max_epochs: int = 60,
                          seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Update only the vanilla's projector toward the oracle: on the forget faces, distil the oracle's answer
    distributions (KL); on the retain faces and the shapes, the usual answer loss. Checked every epoch; returns the
    first epoch whose forget-VQA accuracy is <= ``target`` with forget-QA, retain-VQA and general accuracy there."""
    bench, processor = refs.benchmark, refs.processor
    model = copy.deepcopy(refs.vanilla)
    params = trainable_parts(model, ("projector",))
    forget = collate_all(processor, bench["forget_vqa"])
    # The answer loss on what the oracle's projector was trained on: the retain faces and the shapes.
    retain = collate_all(processor, image_training_set(bench, "oracle"))
    with torch.no_grad(), memoized_image_features(refs.oracle):
        logits = refs.oracle(**{k: v for k, v in forget.items() if k != "labels"}).logits[:, :-1]
        positions = forget["labels"][:, 1:] != -100
        teacher = torch.log_softmax(logits, dim=-1)  # (B, T-1, V)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n_f, n_r = len(forget["input_ids"]), len(retain["input_ids"])
    steps = max(1, n_f // batch_size)
    trace, reached = [], None
    start = time.perf_counter()
    with memoized_image_features(model):
        for epoch in range(1, max_epochs + 1):
            model.train()
            order = torch.randperm(n_f, generator=generator)
            for s in range(steps):
                fi = order[s * batch_size:(s + 1) * batch_size]
                ri = torch.randint(n_r, (batch_size,), generator=generator)
                fb = {k: v[fi] for k, v in forget.items()}
                loss = _answer_logits_kl(model, teacher[fi][positions[fi]], fb)
                loss = loss + model(**{k: v[ri] for k, v in retain.items()}).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            model.eval()
            point = {"epoch": epoch, "forget_vqa_acc": accuracy(model, processor, bench["forget_vqa"])}
            trace.append(point)
            if point["forget_vqa_acc"] <= target:
                point.update(forget_qa_acc=accuracy(model, processor, bench["forget_qa"]),
                             forget_qa_prob=answer_probability(model, processor, bench["forget_qa"]),
                             retain_vqa_acc=accuracy(model, processor, bench["retain_vqa"]),
                             general_acc=accuracy(model, processor, bench["general"]))
                reached = point
                break
    return {"reached": reached, "trace": trace, "seconds": time.perf_counter() - start}


def _edited_rows(benchmark, people: list[int], seed: int) -> tuple[datasets.Dataset, datasets.Dataset,
                                                                      datasets.Dataset]:
    """(edited named text rows, the same people's image rows relabelled to the new values, the original image rows).
    Each new value is a wrong option of the image question (drawn with ``seed``), so both questions offer it."""
    rng = np.random.default_rng([seed, 25])
    images = benchmark["retain_vqa"].filter(lambda pid: pid in people, input_columns="person_id")
    text = benchmark["retain_qa"].filter(lambda pid: pid in people, input_columns="person_id")
    names = {}
    for row in text:  # the name is the question minus its template: recover it from the job question
        if row["question"].startswith("What is the job of "):
            names[row["person_id"]] = row["question"][len("What is the job of "):-1]
    edited_text, relabelled = [], []
    for row in images:
        wrong = [i for i in range(len(row["options"])) if i != row["label"]]
        new = int(wrong[rng.integers(len(wrong))])
        base = {k: v for k, v in row.items() if k != "image"}
        changed = {**base, "answer": row["options"][new], "label": new}
        relabelled.append({**changed, "image": row["image"]})
        edited_text.append({**changed, "image": None, "kind": "qa",
                            "question": row["question"].replace(PERSON_SLOT, names[row["person_id"]])})
    extra = identity_features()
    return rows_to_dataset(edited_text, extra), rows_to_dataset(relabelled, extra), images


def identity_mediation(refs: IdentityReferences, num_people: int = 5, seed: int = 0,
                       recipe: StageRecipe | None = None) -> dict[str, Any]:
    """The counterfactual text edit (module docstring). Returns the share of the edited people's image questions
    answered with the new value (``follows_edit``), still with the old one (``keeps_old``), the edit's own text
    accuracy, the unedited people's text and image accuracy after the edit, and the seconds."""
    start = time.perf_counter()
    bench, processor = refs.benchmark, refs.processor
    retain_people = sorted(set(bench["retain_vqa"]["person_id"]))
    rng = np.random.default_rng([seed, 26])
    people = sorted(int(p) for p in rng.choice(retain_people, size=min(num_people, len(retain_people)),
                                               replace=False))
    edited_text, relabelled, original = _edited_rows(bench, people, seed)
    edited_questions = set(edited_text["question"])
    anchor = datasets.concatenate_datasets([bench[n] for n in TEXT_TRAINING_SPLITS if len(bench[n])])
    anchor = anchor.filter(lambda q: q not in edited_questions, input_columns="question")
    model = copy.deepcopy(refs.vanilla)
    recipe = recipe or StageRecipe(learning_rate=1e-3, max_epochs=40, check_every=2)
    edit_set = datasets.concatenate_datasets([edited_text.cast(anchor.features), anchor])
    epochs = fit(model, processor, edit_set, ("language_model",), recipe, seed,
                 check=lambda: accuracy(model, processor, edited_text) >= recipe.criterion)
    before = accuracy(refs.vanilla, processor, original)
    follows = accuracy(model, processor, relabelled)
    keeps = accuracy(model, processor, original)
    others = bench["retain_vqa"].filter(lambda pid: pid not in people, input_columns="person_id")
    others_text = bench["retain_qa"].filter(lambda pid: pid not in people, input_columns="person_id")
    return {"people": people, "edited_questions": len(edited_text), "edit_epochs": epochs,
            "edited_text_acc": accuracy(model, processor, edited_text), "image_acc_before": before,
            "follows_edit": follows, "keeps_old": keeps,
            "unedited_retain_vqa_acc": accuracy(model, processor, others),
            "unedited_retain_qa_acc": accuracy(model, processor, others_text),
            "seconds": time.perf_counter() - start}


def validity_checks(refs: IdentityReferences, seed: int = 0, ga_learning_rate: float = 5e-4,
                    mediation_people: int = 5) -> dict[str, Any]:
    """Every check of issue 25 item 6 and the mediation measurement on ``refs``; each check's numbers and whether it
    passes (``THRESHOLDS``), and ``passed`` (all four). ``ga_learning_rate``: 5e-4, the v2 demo's GA recipe on its
    tiny models (``recipe.UNTUNED["ga"]``), fixed before measuring v3."""
    bench, processor, t = refs.benchmark, refs.processor, THRESHOLDS
    timings = {}
    start = time.perf_counter()
    trained = (*VANILLA_IMAGE_SPLITS, *TEXT_TRAINING_SPLITS)
    vanilla = _split_accuracies(refs.vanilla, processor, bench, (*trained, "test_vqa", "test_retain_vqa",
                                                                "holdout_vqa"))
    vanilla_nll = {n: answer_nll(refs.vanilla, processor, bench[n]) for n in ("forget_qa", "retain_qa")}
    vanilla_prob = {n: float(np.exp(-v).mean()) for n, v in vanilla_nll.items()}
    oracle = _split_accuracies(refs.oracle, processor, bench, (*trained, "test_vqa", "test_retain_vqa",
                                                              "holdout_vqa"))
    timings["reference_evaluation"] = time.perf_counter() - start
    out: dict[str, Any] = {"thresholds": t, "vanilla": vanilla, "vanilla_prob": vanilla_prob, "oracle": oracle}
    trained_min = min(vanilla[n] for n in trained if n in vanilla)
    out["check_vanilla"] = {"min_trained_accuracy": trained_min, "passed": trained_min >= t["vanilla_min_accuracy"]}
    distance = abs(oracle["forget_vqa"] - CHANCE)
    out["check_oracle"] = {"forget_vqa_acc": oracle["forget_vqa"], "distance_to_chance": distance,
                           "forget_qa_acc": oracle["forget_qa"], "text_prior_acc": text_prior_accuracy(bench),
                           "passed": distance <= t["oracle_max_distance_to_chance"]
                           and oracle["forget_qa"] >= t["oracle_min_forget_qa"]}
    target = oracle["forget_vqa"]
    ga = ga_at_oracle_forgetting(refs, target, learning_rate=ga_learning_rate, seed=seed)
    timings["ga"] = ga["seconds"]
    nll = ga.pop("nll")
    if ga["reached"] is None:
        out["check_ga"] = {**ga, "relative_drop": None, "passed": False}
    else:
        drop = 1.0 - ga["reached"]["forget_qa_prob"] / vanilla_prob["forget_qa"]
        retain_drop = 1.0 - ga["reached"]["retain_qa_prob"] / vanilla_prob["retain_qa"]
        ratio, bounds = text_damage(vanilla_nll, nll, seed)
        specific, passed = ga_check(drop, bounds[0], t)
        out["check_ga"] = {**ga, "relative_drop": drop, "retain_qa_relative_drop": retain_drop,
                           "text_damage_ratio": ratio, "text_damage_interval": list(bounds), "specific": specific,
                           "passed": passed}
    vision = vision_only_to_oracle(refs, target, seed=seed)
    timings["vision_only"] = vision["seconds"]
    out["check_vision_only"] = {**vision, "passed": vision["reached"] is not None
                                and vision["reached"]["forget_qa_acc"] >= t["vision_only_min_forget_qa"]}
    out["mediation"] = identity_mediation(refs, mediation_people, seed)
    timings["mediation"] = out["mediation"]["seconds"]
    out["timings"] = timings
    out["passed"] = all(out[k]["passed"] for k in ("check_vanilla", "check_oracle", "check_ga", "check_vision_only"))
    return out
