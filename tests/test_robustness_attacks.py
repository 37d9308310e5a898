"""Robustness attacks (issue 29 item 2): the registry, and each attack's metric moving the right way.

Two pairs of models, the first reused from the session's quick-demo cache:

* the quick demo's **vanilla** tiny LLaVA (trained on every row, forget portraits included) and its **oracle** (never
  trained on the forget portraits): 20 forget image questions;
* a tiny text-only Llama that memorised 24 people's job and city (4-way options, values shared across people, each
  question also seen once inside random filler words, so that it answers whatever surrounds the question), and the
  same Llama before training: 8 forget people, 16 forget questions.

Bounds come from the counts: an accuracy over n 4-way questions that carries no information has mean 1/4 and standard
deviation sqrt(1/4 * 3/4 / n); "above chance" means above chance + 3 standard deviations (0.54 for n = 20, 0.575 for
n = 16), never a value that merely passed here. A mean over templates or transforms has at most that deviation.
"""

import copy
import json
import math
import os
import re

import datasets
import numpy as np
import pytest
import torch

from hf_unlearn.cli import main
from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.data.synthetic import FIRST_NAMES, LAST_NAMES, build_synthetic_benchmark
from hf_unlearn.demo import DemoConfig
from hf_unlearn.demo.references import load_or_train_reference_models
from hf_unlearn.evaluation import ATTACKS, AttackSpec, Evaluator, attack_names, register_attack
from hf_unlearn.evaluation.attack_registry import parse_attacks
from hf_unlearn.evaluation.input_attacks import (
    JAILBREAK_TEMPLATES,
    REPHRASE_TRANSFORMS,
    TYPOGRAPHIC_INSTRUCTION,
    transform_image,
    typographic_image,
)
from hf_unlearn.testing import tiny_llama


def above_chance(n: int, chance: float = 0.25, k: float = 3.0) -> float:
    """chance + k standard deviations of an accuracy over n questions answered at chance."""
    return chance + k * math.sqrt(chance * (1 - chance) / n)


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def quick(quick_demo_cache):
    config = DemoConfig.quick(seed=0)
    bench = build_synthetic_benchmark(config.benchmark)
    refs = load_or_train_reference_models(bench, config, quick_demo_cache, False, lambda line: None)
    return refs["vanilla"]["model"], refs["oracle"]["model"], refs["vanilla"]["processor"], bench


JOBS, CITIES = ["baker", "pilot", "nurse", "farmer"], ["Oslo", "Lima", "Riga", "Perth"]
FILLER = "please tell me now quickly the true record of this question for my notes and say it plainly".split()


def people_rows(num_people: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(num_people):
        name = f"{FIRST_NAMES[p]} {LAST_NAMES[p]}"
        for template, pool in (("What is the job of {}?", JOBS), ("Which city does {} live in?", CITIES)):
            value = pool[int(rng.integers(len(pool)))]
            rows.append(dict(person_id=p, kind="qa", image=None, question=template.format(name), answer=value,
                             options=list(pool), label=pool.index(value)))
    return rows


@pytest.fixture(scope="module")
def text_models():
    """(memorised Llama, the same Llama before training, tokenizer, benchmark with forget_qa / retain_qa)."""
    rows = people_rows()
    rng = np.random.default_rng(1)

    def wrapped(question):  # the question inside 2-7 filler words before and 0-4 after
        before = " ".join(rng.choice(FILLER, int(rng.integers(2, 8))))
        return f"{before} {question} {' '.join(rng.choice(FILLER, int(rng.integers(0, 5))))}".strip()

    train = [{"question": r["question"], "answer": r["answer"]} for r in rows]
    train += [{"question": wrapped(r["question"]), "answer": r["answer"]} for r in rows]
    corpus = [r["question"] for r in rows] + JOBS + CITIES + FILLER + list(JAILBREAK_TEMPLATES.values())
    model, tok = tiny_llama(corpus=corpus)
    untrained = copy.deepcopy(model)
    batch = UnlearnDataCollator(tok)(train)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):  # full batch; the loss ends near 0.05
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    bench = datasets.DatasetDict(
        forget_qa=datasets.Dataset.from_list([r for r in rows if r["person_id"] % 3 == 0]),
        retain_qa=datasets.Dataset.from_list([r for r in rows if r["person_id"] % 3 != 0]),
    )
    return model, untrained.eval(), tok, bench


# ------------------------------------------------------------------------------------------------------ registry
def test_registry_names_parsing_and_one_registration_adds_an_attack(text_models):
    assert set(attack_names()) >= {"rephrase", "typographic", "jailbreak", "probing", "relearn", "quant"}
    assert parse_attacks(" probing, Jailbreak,probing,") == ["probing", "jailbreak"]
    assert parse_attacks(None) == [] and parse_attacks(["relearn"]) == ["relearn"]
    with pytest.raises(ValueError, match="Unknown attack 'jailbrek'. Did you mean 'jailbreak'"):
        parse_attacks("probing,jailbrek")
    with pytest.raises(ValueError, match="already registered"):
        register_attack(AttackSpec("probing", lambda ctx: {}, "again", headline="probing_acc"))

    # Another attack is one registration; it may build and score a modified copy of the model.
    model, _, tok, bench = text_models

    def weight_noise(ctx):
        noisy = copy.deepcopy(ctx.model)
        generator = torch.Generator().manual_seed(ctx.seed)
        with torch.no_grad():
            for p in noisy.parameters():
                p.add_(ctx.options.get("scale", 0.0) * torch.randn(p.shape, generator=generator))
        return {"noise_acc": ctx.evaluator_for(noisy).mcq_accuracy(ctx.forget_split())}

    register_attack(AttackSpec("noise", weight_noise, "Gaussian weight noise.", headline="noise_acc"))
    try:
        ev = Evaluator(model, tok, bench, batch_size=16)
        out = ev.run_attacks("noise", options={"noise": {"scale": 0.0}})
        assert out == {"noise": {"noise_acc": ev.mcq_accuracy("forget_qa")}}  # zero noise: the model's own number
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ev.model.parameters()))
    finally:
        ATTACKS.pop("noise")


def test_image_attacks_skip_a_text_only_model_and_say_why(text_models):
    model, _, tok, bench = text_models
    ev = Evaluator(model, tok, bench, batch_size=16)
    assert ev.run_attacks("rephrase,typographic") == {}
    assert set(ev.skipped) == {"attack rephrase", "attack typographic"}
    assert "text-only model" in ev.skipped["attack rephrase"]


# ------------------------------------------------------------------------------------------------------ probing
def test_probe_reads_the_answers_of_a_memorised_model_and_not_of_an_untrained_one(text_models):
    model, untrained, tok, bench = text_models
    n = len(bench["forget_qa"])
    ev = Evaluator(model, tok, bench, batch_size=16)
    out = ev.run_attacks("probing", reference=untrained)["probing"]
    # Every forget answer is a retain answer too (4 values, 16 retain people), so every row is scored, among 4.
    assert out["probing_rows"] == n and out["probing_chance"] == 0.25
    assert out["probing_acc"] >= above_chance(n)  # measured 1.0
    assert out["probing_reference_acc"] < above_chance(n)  # measured 0.31
    own = Evaluator(untrained, tok, bench, batch_size=16).run_attacks("probing")["probing"]
    assert own["probing_acc"] == out["probing_reference_acc"]  # the reference's number is its own probe's
    with pytest.raises(ValueError, match="layer=7 is out of range: the model has 2 layers"):
        ev.run_attacks("probing", options={"probing": {"layer": 7}})
    with pytest.raises(ValueError, match="unknown option"):
        ev.run_attacks("probing", options={"probing": {"layers": 1}})


# ------------------------------------------------------------------------------------------------------ jailbreak
def test_jailbreak_templates_keep_a_memorised_model_above_chance_and_an_untrained_one_at_it(text_models):
    model, untrained, tok, bench = text_models
    n = len(bench["forget_qa"])
    out = Evaluator(model, tok, bench, batch_size=16).run_attacks("jailbreak")["jailbreak"]
    assert set(out) == {f"jailbreak_{t}_acc" for t in JAILBREAK_TEMPLATES} | {"jailbreak_mean_acc",
                                                                               "jailbreak_max_acc"}
    per_template = [out[f"jailbreak_{t}_acc"] for t in JAILBREAK_TEMPLATES]
    assert out["jailbreak_max_acc"] == max(per_template)
    assert out["jailbreak_mean_acc"] == pytest.approx(np.mean(per_template))
    assert out["jailbreak_mean_acc"] >= above_chance(n)  # measured 0.78 (templates 0.69-0.81)
    base = Evaluator(untrained, tok, bench, batch_size=16).run_attacks("jailbreak")["jailbreak"]
    assert base["jailbreak_mean_acc"] < above_chance(n)  # measured 0.31


# ------------------------------------------------------------------------------------------------------ rephrase
def test_transforms_are_seeded_views_of_the_same_size(quick):
    image = quick[3]["forget_vqa"][0]["image"].convert("RGB")
    for kind in REPHRASE_TRANSFORMS:
        a = transform_image(image, kind, np.random.default_rng(0))
        assert a.size == image.size and a.mode == "RGB"
        assert np.array_equal(np.asarray(a), np.asarray(transform_image(image, kind, np.random.default_rng(0))))
        assert not np.array_equal(np.asarray(a), np.asarray(image))
    with pytest.raises(ValueError, match="Unknown transform"):
        transform_image(image, "flip", np.random.default_rng(0))


def test_rephrased_images_expose_the_vanilla_and_not_the_oracle(quick):
    vanilla, oracle, processor, bench = quick
    n = len(bench["forget_vqa"])
    v = Evaluator(vanilla, processor, bench, batch_size=16).run_attacks("rephrase")["rephrase"]
    o = Evaluator(oracle, processor, bench, batch_size=16).run_attacks("rephrase")["rephrase"]
    names = [f"rephrase_{k}_acc" for k in (*REPHRASE_TRANSFORMS, "benchmark")]
    assert set(v) == set(o) == {*names, "rephrase_acc"}
    assert v["rephrase_acc"] == max(v[k] for k in names)
    # The vanilla recognises the forget people under every transform (measured 0.85-1.0) ...
    assert min(v[k] for k in names) >= above_chance(n)
    # ... the oracle, which never saw their portraits, does not (measured 0.25-0.40, mean 0.33).
    assert np.mean([o[k] for k in names]) < above_chance(n)


# ------------------------------------------------------------------------------------------------------ typographic
def test_typographic_image_holds_the_picture_above_the_rendered_question(quick):
    image = quick[3]["forget_vqa"][0]["image"].convert("RGB")
    canvas = np.asarray(typographic_image(image, "What is the job of the person in the image?")).astype(int)
    assert canvas.shape == (336, 336, 3)
    picture = np.asarray(image.resize((224, 224))).astype(int)
    assert np.abs(canvas[:224, 56:280] - picture).mean() < 8  # the picture, scaled, top centre
    band = canvas[224:]
    assert (band < 100).all(axis=2).sum() > 200  # dark text pixels under it
    assert (np.asarray(typographic_image(image, "")).astype(int)[224:] == 255).all()  # no text: a white band
    assert (np.asarray(typographic_image(None, "Question?")) < 100).any()  # text only (FigStep's own form)


def test_typographic_attack_scores_the_rendered_rows(quick):
    """Tiny models cannot read text in a 32-pixel image, so no direction is asserted here (docs/robustness.md):
    measured 0.40 for the vanilla and 0.15 for the oracle over the 20 forget questions."""
    vanilla, oracle, processor, bench = quick
    ev = Evaluator(vanilla, processor, bench, batch_size=16)
    out = ev.run_attacks("typographic")["typographic"]
    assert set(out) == {"typographic_acc"} and 0.0 <= out["typographic_acc"] <= 1.0
    assert ev.run_attacks("typographic")["typographic"] == out  # deterministic
    assert TYPOGRAPHIC_INSTRUCTION.endswith("image.")


# ------------------------------------------------------------------------------------------------------ the command
def test_eval_command_runs_the_attacks_each_with_its_own_rows(quick_demo_cache, tmp_path, capsys):
    folder = os.path.join(quick_demo_cache, "demo", DemoConfig.quick(seed=0).cache_key())
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", os.path.join(folder, "vanilla"), "--benchmark", "builtin", "--no-rouge",
                 "--no-mia", "--attacks", "probing,rephrase,typographic,jailbreak",
                 "--reference", os.path.join(folder, "oracle"), "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert list(payload["attacks"]) == ["probing", "rephrase", "typographic", "jailbreak"]
    for name, values in payload["attacks"].items():
        assert values and all(k.startswith(name) for k in values)
        assert all(payload["metrics"][k] == v for k, v in values.items())  # each metric also in the flat list
    assert "probing_reference_acc" in payload["attacks"]["probing"]
    printed = capsys.readouterr().out
    assert all(line.split()[0] in payload["metrics"] for line in printed.splitlines()[:-1])
    # Privacy: aggregate numbers only; no forget question, answer or option reaches the output.
    bench = build_synthetic_benchmark(DemoConfig.quick(seed=0).benchmark)
    text = out.read_text() + printed
    forget = bench["forget_vqa"]
    assert not [s for s in {*forget["answer"], *sum(forget["options"], [])} if re.search(rf"\b{re.escape(s)}\b", text)]

    assert main(["eval", "--model", os.path.join(folder, "vanilla"), "--attacks", "probing,jailbrek"]) == 2
    err = capsys.readouterr().err
    assert "--attacks: Unknown attack 'jailbrek'. Did you mean 'jailbreak'?" in err and err.count("\n") == 1
