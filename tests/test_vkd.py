"""VKDTrainer: frozen LLM, forget features pushed past the margin, retain features kept, precomputed teacher."""

from copy import deepcopy

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from hf_unlearn import UnlearnDataCollator, VKDConfig
from hf_unlearn.data.row_index import ROW_INDEX_KEY
from hf_unlearn.features import extract_features
from hf_unlearn.losses import feature_distance, sequence_log_probs
from hf_unlearn.methods.vkd import VKDTrainer, freeze_for_vkd
from hf_unlearn.models import get_language_model, language_parameter_names, vision_parameter_names
from hf_unlearn.testing import tiny_vlm
from hf_unlearn.trainers.reference import PRECOMPUTED_NAME

Q = "What is the name of the person in the image?"


def noise_people():
    """2 forget portraits, 4 retain portraits (+ 1 text-only retain row); seeded noise images, 32x32.

    Noise images, because the vision tower must be able to tell forget and retain images apart: the toy solid-colour
    portraits are near-linear combinations of each other (yellow = red + green).
    """
    rng = np.random.default_rng(0)
    img = lambda: Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))  # noqa: E731
    forget = [{"image": img(), "question": Q, "answer": n} for n in ("Alice Smith", "Bob Jones")]
    retain = [{"image": img(), "question": Q, "answer": n} for n in ("Carol White", "Dan Brown", "Eve Black",
                                                                     "Frank Green")]
    retain += [{"image": None, "question": "What is the job of Carol White?", "answer": "nurse"}]
    return Dataset.from_list(forget), Dataset.from_list(retain)


def strangers():
    """3 never-seen portraits (the holdout set of the stranger target), seeded apart from noise_people's."""
    rng = np.random.default_rng(1)
    return Dataset.from_list([{"image": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
                               "question": Q, "answer": n} for n in ("Gus Grey", "Hal Hill", "Ida Irons")])


def config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, per_device_eval_batch_size=3,
                learning_rate=1e-3, max_steps=20, logging_steps=1, use_cpu=True, save_strategy="no",
                disable_tqdm=True, seed=0, report_to="none")
    return VKDConfig(**{**base, **kw})


@torch.no_grad()
def mean_distance(student, teacher, dataset, processor, args, scale) -> float:
    """Mean per-token distance between student and teacher features over the rows with an image."""
    batch = UnlearnDataCollator(processor)([r for r in dataset if r["image"] is not None])
    s, _ = extract_features(student, batch, args.feature_site, args.feature_layer)
    t, _ = extract_features(teacher, batch, args.feature_site, args.feature_layer)
    return (feature_distance(s, t, args.distance) / scale).mean().item()


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "qwen2_5_vl"])
def test_vkd_pushes_forget_keeps_retain_and_freezes_llm(arch, tmp_path):
    model, processor = tiny_vlm(arch)
    start = deepcopy(model).eval()
    forget, retain = noise_people()
    # The hinge's behaviour at the learning rate as given (the defaults are measured in test_forgetting_defaults.py).
    args = config(tmp_path, forget_feature_loss="hinge", vision_lr_scale=1.0)
    llm_names = set(language_parameter_names(model))
    llm_before = {n: p.detach().clone() for n, p in model.named_parameters() if n in llm_names}
    trainer = VKDTrainer(model, args, train_dataset=forget, retain_dataset=retain, processing_class=processor)

    # Only the vision tower and projector train; the default teacher shares the frozen LLM weights.
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(vision_parameter_names(model))
    teacher_params = dict(trainer.ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert (teacher_params[name].data_ptr() == p.data_ptr()) == (name in llm_names)
    assert mean_distance(model, start, forget, processor, args, 1.0) == 0.0

    trainer.train()
    for name, p in model.named_parameters():
        if name in llm_names:
            assert torch.equal(p, llm_before[name]), name  # bit-identical
    forget_d = mean_distance(model, start, forget, processor, args, trainer.feature_scale)
    retain_d = mean_distance(model, start, retain, processor, args, trainer.feature_scale)
    print(f"\n{arch}: forget distance {forget_d:.3f} (margin {args.margin}), retain distance {retain_d:.4f}")
    assert forget_d > args.margin  # measured 1.56 / 1.61 / 2.00 (llava / qwen2_vl / qwen2_5_vl)
    assert retain_d < 0.06  # measured 0.029 / 0.028 / 0.025
    assert retain_d < forget_d / 20


@pytest.mark.parametrize("arch,site", [("llava", "vision_layer"), ("llava", "projector"), ("llava", "llm_hidden"),
                                       ("qwen2_5_vl", "projector"), ("qwen2_vl", "vision_layer")])
def test_precomputed_teacher_features_equal_live(arch, site, tmp_path):
    forget, retain = noise_people()
    model_a, processor = tiny_vlm(arch)
    model_b, _ = tiny_vlm(arch)
    live = VKDTrainer(model_a, config(tmp_path, feature_site=site, max_steps=3), train_dataset=forget,
                      retain_dataset=retain, processing_class=processor)
    pre = VKDTrainer(model_b, config(tmp_path, feature_site=site, max_steps=3, precompute_teacher_features=True),
                     train_dataset=forget, retain_dataset=retain, processing_class=processor)
    assert pre.ref_model is None  # no teacher copy at all: the starting model is read once at train begin
    pre.prepare_teacher()
    live.prepare_teacher()
    assert pre.ref_model is None and pre.precomputed.names() == ["forget.ref_logp", "forget.teacher", "retain.teacher"]
    assert pre.feature_scale == pytest.approx(live.feature_scale, rel=1e-5)

    collate = UnlearnDataCollator(processor)
    for side, dataset in (("forget", forget), ("retain", retain)):
        stored = pre.precomputed.rows(f"{side}.teacher")
        assert len(stored) == len(dataset)
        for i, row in enumerate(dataset):
            feats, out = live.teacher_pass(live.model, collate([row]), need_outputs=side == "forget")
            if feats is None:
                assert stored[i].numel() == 0
                continue
            assert stored[i].device.type == "cpu"
            torch.testing.assert_close(stored[i], feats, atol=1e-5, rtol=1e-4)
            if side == "forget":  # NPO reference log-probs precomputed from the same pass
                ref, _ = sequence_log_probs(out.logits, collate([row])["labels"])
                assert pre.precomputed.rows("forget.ref_logp")[i].item() == pytest.approx(ref.item(), abs=1e-4)

    live.train()
    pre.train()
    keys = ("loss", "forget_loss", "push_away", "feature_match")
    for a, b in zip(live.state.log_history[:-1], pre.state.log_history[:-1]):
        for key in keys:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), key
    assert pre.ref_model is None


def test_logs_each_term_and_runs_the_llm_only_where_needed(tmp_path):
    model, processor = tiny_vlm("llava")
    forget, retain = noise_people()
    trainer = VKDTrainer(model, config(tmp_path, max_steps=2, probe_rows=0), train_dataset=forget,
                         retain_dataset=retain, processing_class=processor)  # no probe: count training passes only
    calls = {"student": 0, "teacher": 0}

    def counter(key):
        return lambda *_: calls.__setitem__(key, calls[key] + 1)

    handles = [get_language_model(model).register_forward_hook(counter("student")),
               get_language_model(trainer.ref_model).register_forward_hook(counter("teacher"))]
    trainer.train()
    for h in handles:
        h.remove()
    # Per step: student forget forward (NPO) and teacher forget forward (NPO reference); retain is vision-only.
    assert calls == {"student": 2, "teacher": 2}
    logs = trainer.state.log_history[0]
    for key in ("forget_loss", "forget_output_loss", "forget_nll", "log_ratio", "push_away",
                "forget_feature_distance", "feature_match", "retain_loss", "feature_scale"):
        assert key in logs, key
    assert "retain_nll" not in logs
    assert logs["forget_loss"] == pytest.approx(logs["forget_output_loss"] + logs["push_away"], rel=1e-5)
    assert logs["retain_loss"] == pytest.approx(10.0 * logs["feature_match"], rel=1e-5)

    model, processor = tiny_vlm("llava")
    trainer = VKDTrainer(model, config(tmp_path, max_steps=1, retain_nll_weight=0.5, forget_loss_type="ga"),
                         train_dataset=forget, retain_dataset=retain, processing_class=processor)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["retain_loss"] == pytest.approx(10.0 * logs["feature_match"] + 0.5 * logs["retain_nll"], rel=1e-5)
    assert logs["forget_output_loss"] == pytest.approx(-logs["forget_nll"], rel=1e-5)


def test_trainable_vision_blocks(tmp_path):
    model, _ = tiny_vlm("llava")
    names = freeze_for_vkd(model, trainable_vision_blocks=1)
    tower = "model.vision_tower."
    assert any(n.startswith(tower + "encoder.layers.1.") for n in names)
    assert not any(n.startswith((tower + "encoder.layers.0.", tower + "embeddings", tower + "pre_layrnorm"))
                   for n in names)
    assert {tower + "post_layernorm.weight", "model.multi_modal_projector.linear_1.weight"} <= set(names)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)
    only_projector = freeze_for_vkd(model, trainable_vision_blocks=0)
    assert all("multi_modal_projector" in n or "post_layernorm" in n for n in only_projector)
    with pytest.raises(ValueError, match="has 2 blocks"):
        freeze_for_vkd(model, trainable_vision_blocks=3)

    qwen, _ = tiny_vlm("qwen2_vl")
    names = freeze_for_vkd(qwen, trainable_vision_blocks=1)
    assert all(n.startswith(("model.visual.blocks.1.", "model.visual.merger.")) for n in names)

    forget, retain = noise_people()
    model, processor = tiny_vlm("llava")
    with pytest.raises(ValueError, match="before the trainable blocks"):
        VKDTrainer(model, config(tmp_path, feature_site="vision_layer", feature_layer=0, trainable_vision_blocks=1),
                   train_dataset=forget, retain_dataset=retain, processing_class=processor)


def test_saliency_mask_restricted_to_trainable_visual_params(tmp_path):
    forget, retain = noise_people()
    model, processor = tiny_vlm("llava")
    llm = "model.language_model.layers.0.mlp.up_proj.weight"
    bad = {llm: torch.ones_like(dict(model.named_parameters())[llm], dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"covers 1 parameters that VKD keeps frozen \(by group: \{'language': 1\}"):
        VKDTrainer(model, config(tmp_path), train_dataset=forget, retain_dataset=retain, processing_class=processor,
                   saliency_mask=bad)
    assert all(p.requires_grad for p in model.parameters())  # checked before anything was frozen

    name = "model.multi_modal_projector.linear_1.weight"
    weight = dict(model.named_parameters())[name]
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[:8] = True
    before = weight.detach().clone()
    trainer = VKDTrainer(model, config(tmp_path, max_steps=3, mask_scope="all"), train_dataset=forget,
                         retain_dataset=retain, processing_class=processor, saliency_mask={name: mask})
    trainer.train()
    assert torch.equal(weight[~mask], before[~mask])  # masked entries untouched
    assert not torch.equal(weight[mask], before[mask])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [name]


def test_bad_configurations_raise(tmp_path):
    for kw, match in ((dict(feature_site="pooler"), "feature_site"), (dict(distance="kl"), "distance"),
                      (dict(forget_loss_type="simnpo"), "forget_loss_type"), (dict(margin=-1.0), "margin"),
                      (dict(retain_loss_type="kl"), "retain_loss_type='kl'"),
                      (dict(trainable_vision_blocks=-1), "trainable_vision_blocks"),
                      (dict(forget_loss_type="none", push_away_weight=0.0), "forget term is empty")):
        with pytest.raises(ValueError, match=match):
            config(tmp_path, **kw)
    forget, retain = noise_people()
    model, processor = tiny_vlm("llava")
    with pytest.raises(ValueError, match="zero gradient"):
        VKDTrainer(model, config(tmp_path, forget_loss_type="none", forget_feature_loss="hinge"),
                   train_dataset=forget, retain_dataset=retain, processing_class=processor)
    with pytest.raises(ValueError, match="forget_feature_loss"):
        config(tmp_path, forget_feature_loss="push")
    with pytest.raises(ValueError, match="retain term is empty"):
        VKDTrainer(model, config(tmp_path, feature_match_weight=0.0), train_dataset=forget, retain_dataset=retain,
                   processing_class=processor)
    with pytest.raises(ValueError, match="not both"):
        VKDTrainer(model, config(tmp_path), train_dataset=forget, processing_class=processor,
                   teacher_model=model, ref_model=model)


def test_teacher_model_from_path_with_features_only(tmp_path):
    """A separate teacher (here another checkpoint, loaded from disk): pure feature distillation works."""
    forget, retain = noise_people()
    teacher, processor = tiny_vlm("llava", seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    model, _ = tiny_vlm("llava", seed=0)
    trainer = VKDTrainer(model, config(tmp_path, forget_loss_type="none", max_steps=15, margin=3.0),
                         train_dataset=forget, retain_dataset=retain, processing_class=processor,
                         teacher_model=str(tmp_path / "teacher"))
    assert not trainer.ref_model.training and not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer.train()
    logs = [h for h in trainer.state.log_history if "feature_match" in h]
    assert logs[-1]["feature_match"] < 0.5 * logs[0]["feature_match"]  # retain features move onto the teacher's
    assert all("forget_nll" not in h for h in logs)  # no output term: the LLM never ran on forget batches
    assert ROW_INDEX_KEY not in trainer.model_inputs({ROW_INDEX_KEY: 0, "input_ids": 1})


def test_peft_adapters_on_the_vision_side_with_adapter_free_teacher(tmp_path):
    from peft import LoraConfig, get_peft_model

    forget, retain = noise_people()
    model, processor = tiny_vlm("llava")
    peft = get_peft_model(model, LoraConfig(
        r=4, target_modules=r".*(vision_tower|language_model).*\.(q_proj|v_proj)"))
    before = {n: p.detach().clone() for n, p in peft.named_parameters()}
    trainer = VKDTrainer(peft, config(tmp_path, max_steps=3), train_dataset=forget, retain_dataset=retain,
                         processing_class=processor)
    # LoRA factors on the LLM are frozen too; the teacher is the base with adapters off (no copy).
    assert trainer.ref_model is None and trainer.reference.adapter_free
    assert trainer.trainable_names and all("vision_tower" in n and "lora_" in n for n in trainer.trainable_names)
    trainer.train()
    changed = {n for n, p in peft.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(trainer.trainable_names)
    assert trainer.state.log_history[1]["forget_feature_distance"] > 0  # adapters moved the student off the base


@pytest.mark.parametrize("with_holdout", [False, True], ids=["random_target", "stranger"])
def test_resume_with_precomputed_features_equals_uninterrupted(with_holdout, tmp_path):
    """The checkpoint carries the teacher features (and the stranger targets): a resumed run needs no teacher and
    matches a straight run."""
    forget, retain = noise_people()
    holdout = strangers() if with_holdout else None

    def make(name):
        model, processor = tiny_vlm("llava")
        args = config(tmp_path, output_dir=str(tmp_path / name), max_steps=4, save_strategy="steps", save_steps=2,
                      per_device_train_batch_size=1, precompute_teacher_features=True, stop_at_holdout=False)
        return model, VKDTrainer(model, args, train_dataset=forget, retain_dataset=retain, processing_class=processor,
                                 holdout_dataset=holdout)

    straight_model, straight = make("straight")
    straight.train()
    _, first = make("resumed")
    first.train()
    ckpt = tmp_path / "resumed" / "checkpoint-2"
    assert (ckpt / PRECOMPUTED_NAME).is_file()
    resumed_model, resumed = make("resumed")
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 4 and resumed.ref_model is None
    assert resumed.feature_scale == straight.feature_scale
    names = {"forget.teacher", "retain.teacher", "forget.ref_logp"} | ({"holdout.teacher"} if with_holdout else set())
    assert set(resumed.precomputed.names()) == names
    assert resumed.args.forget_feature_loss == ("stranger" if with_holdout else "random_target")
    for name in names:
        for a, b in zip(straight.precomputed.rows(name), resumed.precomputed.rows(name), strict=True):
            assert torch.equal(a, b)
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name

    # Without the features file and without a teacher, resuming is an error (the starting model is gone). A checkpoint
    # of an earlier version (no manifest) is the way to get one: with the manifest it would be incomplete.
    (ckpt / PRECOMPUTED_NAME).unlink()
    (ckpt / "hf_unlearn_manifest.json").unlink()
    _, again = make("resumed")
    with pytest.raises(ValueError, match="no teacher_model was given"):
        again.train(resume_from_checkpoint=str(ckpt))


def test_random_target_acts_from_the_first_step_where_the_hinge_cannot(tmp_path):
    """Student = teacher at the start: the hinge max(0, m - d) has zero gradient there, the random target does not."""
    from hf_unlearn import losses

    model, processor = tiny_vlm("llava")
    forget, retain = noise_people()
    trainer = VKDTrainer(model, config(tmp_path, forget_loss_type="none"), train_dataset=forget,
                         retain_dataset=retain, processing_class=processor)  # random_target: no output term needed
    trainer.prepare_teacher()
    batch = trainer._prepare_inputs(trainer.data_collator.collator([forget[0], forget[1]]))
    trainable = [p for p in model.parameters() if p.requires_grad]

    def grad_norm(loss):
        grads = torch.autograd.grad(loss, trainable, allow_unused=True)
        return sum(g.norm().item() for g in grads if g is not None)

    loss, logs = trainer.forget_loss(model, batch)
    assert logs["forget_feature_distance"] == 0.0 and logs["push_away"] > 1.0  # at the teacher, far from the target
    assert grad_norm(loss) > 0
    feats, _ = trainer._features(model, trainer.model_inputs(batch), False)
    teacher = trainer._teacher_features_for("forget", model, batch, trainer.model_inputs(batch), feats)
    assert grad_norm(losses.hinge_push_away(trainer.feature_distance(feats, teacher), 1.0)) == 0.0
    target = trainer.forget_target(feats)
    assert target.shape == (feats.shape[-1],)
    assert target.pow(2).mean().sqrt().item() == pytest.approx(trainer.feature_rms, rel=1e-5)  # the features' norm


def test_stranger_target_is_the_default_with_a_holdout_set_and_pulls_forget_features_onto_strangers(tmp_path):
    """With holdout_dataset= the forget images' features move towards the teacher's features of never-seen images
    (each forget row its own stranger), the retain features less, the language model not at all."""
    model, processor = tiny_vlm("llava")
    start = deepcopy(model).eval()
    forget, retain = noise_people()
    holdout = strangers()
    args = config(tmp_path, forget_loss_type="none", stop_at_holdout=False)
    trainer = VKDTrainer(model, args, train_dataset=forget, retain_dataset=retain, processing_class=processor,
                         holdout_dataset=holdout)
    assert args.forget_feature_loss == "stranger"
    trainer.prepare_teacher()
    collate = UnlearnDataCollator(processor)
    strangers_seen = [extract_features(start, collate([row]), args.feature_site, args.feature_layer)[0]
                      for row in holdout]
    stored = trainer.precomputed.rows("holdout.teacher")
    assert len(stored) == 3
    for got, want in zip(stored, strangers_seen, strict=True):
        torch.testing.assert_close(got, want)
    batch = trainer._prepare_inputs(trainer.row_collator([{**forget[i], ROW_INDEX_KEY: i} for i in (0, 1)]))
    target = trainer.stranger_target(batch, torch.empty(2 * 16, strangers_seen[0].shape[-1]))
    # Row i gets stranger (i * 7919) mod 3: rows 0 and 1 get strangers 0 and 2, fixed for the whole run.
    assert torch.equal(target, torch.cat([stored[0], stored[2]]))

    @torch.no_grad()
    def distance_to_strangers(m):
        feats = extract_features(m, collate(list(forget)), args.feature_site, args.feature_layer)[0]
        return (feature_distance(feats, target, args.distance) / trainer.feature_scale).mean().item()

    before = distance_to_strangers(model)
    trainer.train()
    after = distance_to_strangers(model)
    retain_drift = mean_distance(model, start, retain, processor, args, trainer.feature_scale)
    assert before > 0.5 and after < 0.6 * before, (before, after)  # forget images now look more like the strangers
    assert retain_drift < 0.5 * (before - after), retain_drift  # retain images move less (feature matching)
    for name in language_parameter_names(model):
        assert torch.equal(dict(model.named_parameters())[name], dict(start.named_parameters())[name]), name

    # Without a holdout set the default is the random target; asking for strangers without one is an error.
    plain = VKDTrainer(tiny_vlm("llava")[0], config(tmp_path, output_dir=str(tmp_path / "plain")),
                       train_dataset=forget, retain_dataset=retain, processing_class=processor)
    assert plain.args.forget_feature_loss == "random_target"
    for given, match in ((None, "no holdout set was given"), (retain.select([4]), "no row with an image")):
        with pytest.raises(ValueError, match=match):
            VKDTrainer(tiny_vlm("llava")[0], config(tmp_path, forget_feature_loss="stranger"), train_dataset=forget,
                       retain_dataset=retain, processing_class=processor, holdout_dataset=given)
