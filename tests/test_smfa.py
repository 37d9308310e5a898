"""SMFA: the loss equals a hand computation with the adapters' deltas written into plain weights, the sculpting equals
Open-MMUnlearning's rule spelled out entry by entry, the merge adds exactly the sculpted delta and leaves a plain model,
each knob does what it says, bad values are refused by name."""

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, PeftModel

from hf_unlearn import SMFAConfig, SMFATrainer
from hf_unlearn.methods.idkpo import CHOSEN_BATCH_KEY
from hf_unlearn.methods.smfa import ANCHOR_ADAPTER, FORGET_ADAPTER, sculpt_delta
from hf_unlearn.testing import tiny_llama
from hf_unlearn.testing.toy import JOBS, NAMES

TARGETS = ["q_proj", "v_proj"]
ROWS = ([{"question": f"What is the job of {n}?", "answer": f"{n} works as a {j}."} for n, j in zip(NAMES, JOBS)]
        + [{"question": f"Who works as a {j}?", "answer": n} for n, j in zip(NAMES, JOBS)])


def _trainer(tmp_path, forget=None, **config):
    model, tok = tiny_llama(seed=0, corpus=NAMES + JOBS)
    args = SMFAConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to="none", seed=0,
                      **config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)
    return SMFATrainer(model=model, args=args, train_dataset=forget or Dataset.from_list(ROWS[:4]),
                       retain_dataset=Dataset.from_list(ROWS[4:8]), processing_class=tok, peft_config=lora), model


def _attached(tmp_path, **config):
    """A trainer with both adapters attached and their factors set to seeded N(0, 0.1) values (B starts at 0)."""
    trainer, base = _trainer(tmp_path, **config)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    trainer.attach_adapters()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if ".lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return trainer, base, start


def _factors(peft_model, adapter):
    """{module name in the base model: (A, B, scaling)} of one adapter."""
    out = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            base_name = name.removeprefix("base_model.model.")
            out[base_name] = (module.lora_A[adapter].weight.detach().clone(),
                              module.lora_B[adapter].weight.detach().clone(), module.scaling[adapter])
    return out


def _plain_with(start, factors):
    """A plain tiny Llama whose adapted weights are W + s B A (the adapter written into the weights)."""
    model, _ = tiny_llama(seed=0, corpus=NAMES + JOBS)
    state = dict(start)
    for name, (a, b, s) in factors.items():
        state[f"{name}.weight"] = start[f"{name}.weight"] + s * b @ a
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def _hand_nll(model, batch) -> float:
    """Mean over every answer token of the batch of -log p(y_t), with explicit loops."""
    logp = F.log_softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    terms = []
    for b in range(logp.shape[0]):
        labels = batch["labels"][b].tolist()
        for t in range(len(labels) - 1):
            if labels[t + 1] != -100:
                terms.append(-logp[b, t, labels[t + 1]].item())
    return sum(terms) / len(terms)


def test_smfa_loss_equals_the_hand_computation(tmp_path):
    """L = forget_weight * NLL_MFA(refusal | forget question) + retain_weight * (NLL_MFA(retain) + NLL_RA(retain))."""
    trainer, _, start = _attached(tmp_path, forget_weight=1.0, retain_weight=0.5)
    batch = trainer.data_collator([trainer.pairing[i] for i in range(4)])
    mfa = _plain_with(start, _factors(trainer.model, FORGET_ADAPTER))
    anchor = _plain_with(start, _factors(trainer.model, ANCHOR_ADAPTER))
    refusal, retain = batch["forget"][CHOSEN_BATCH_KEY], batch["retain"]
    expected = _hand_nll(mfa, refusal) + 0.5 * (_hand_nll(mfa, retain) + _hand_nll(anchor, retain))
    trainer.model.eval()
    # float32 forwards of the same weights, W + sBA formed once here and xW + s(xA)B in PEFT: they differ by a few
    # roundings (u = 6e-8 relative) per product, carried through 2 layers, the softmax and the mean over ~40 tokens;
    # 1e-5 bounds that with room (measured: 6e-8).
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(expected, rel=1e-5)
    logged = {k: v[-1] for k, v in trainer._metrics.items()}
    assert logged["forget_nll"] == pytest.approx(_hand_nll(mfa, trainer.model_inputs(batch["forget"])), rel=1e-5)
    assert logged["anchor_nll"] == pytest.approx(_hand_nll(anchor, retain), rel=1e-5)
    # The refusal really is the target: the answer is gone from the refusal batch's labels
    tok = trainer.processing_class
    labels = refusal["labels"][0]
    assert ROWS[0]["answer"] not in tok.decode(labels[labels != -100])


def test_sculpt_delta_is_open_mmunlearnings_rule_entry_by_entry():
    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(6, 5, generator=g), 0.3 * torch.randn(6, 5, generator=g)
    for k in (0.0, 0.5, 1.0, 5.0):
        sculpted, masked = sculpt_delta(f, r, k)
        rho = f.norm().item() / (r.norm().item() + 1e-12)
        for i in range(6):
            for j in range(5):
                fij, rij = f[i, j].item(), r[i, j].item()
                drop = fij * rij < 0 and abs(fij) > k * rho * abs(rij)
                assert bool(masked[i, j]) == drop, (k, i, j)
                assert sculpted[i, j].item() == (0.0 if drop else fij)


def test_anchor_k_zero_drops_every_conflict_and_a_large_k_none():
    g = torch.Generator().manual_seed(0)
    f, r = torch.randn(40, 30, generator=g), torch.randn(40, 30, generator=g)
    conflict = f * r < 0
    assert torch.equal(sculpt_delta(f, r, 0.0)[1], conflict)  # every conflicting entry (|f| > 0 everywhere here)
    assert not sculpt_delta(f, r, 1e6)[1].any()  # |f| / |r| stays far below 1e6 on these draws
    counts = [int(sculpt_delta(f, r, k)[1].sum()) for k in (0.0, 0.5, 2.0, 8.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # fewer dropped as k grows
    # An anchor that did not move (zero delta) drops nothing: no sign conflicts with 0
    assert not sculpt_delta(f, torch.zeros_like(r), 0.0)[1].any()


@pytest.mark.parametrize("k", [0.0, 5.0])
def test_the_merge_adds_exactly_the_sculpted_delta_and_leaves_a_plain_model(k, tmp_path):
    trainer, base, start = _attached(tmp_path, anchor_k=k)
    forget, anchor = _factors(trainer.model, FORGET_ADAPTER), _factors(trainer.model, ANCHOR_ADAPTER)
    trainer.sculpt_into_base()
    assert trainer.model is base and not isinstance(trainer.model, PeftModel) and not hasattr(base, "peft_config")
    after = base.state_dict()
    assert set(after) == set(start)  # the starting model's keys: no adapter left
    masked = total = 0
    for key, value in after.items():
        module = key.removesuffix(".weight")
        if module not in forget:
            assert torch.equal(value, start[key]), key  # untargeted weights are untouched
            continue
        (a_f, b_f, s), (a_r, b_r, _) = forget[module], anchor[module]
        expected, mask = sculpt_delta(s * b_f @ a_f, s * b_r @ a_r, k)
        # W + D in float32, D formed as s(BA) by PEFT and (sB)A here: a few roundings of O(1) values (u = 6e-8);
        # measured 1.5e-8
        torch.testing.assert_close(value, start[key] + expected, rtol=0, atol=1e-6)
        masked, total = masked + int(mask.sum()), total + mask.numel()
    assert trainer.masked_fraction == masked / total
    if k == 0.0:  # every conflicting entry dropped: about half of them, on independent random factors
        assert 0.3 < masked / total < 0.7


def test_training_returns_a_plain_model_and_logs_what_the_anchor_dropped(tmp_path):
    trainer, base = _trainer(tmp_path, max_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                             disable_tqdm=True, probe_rows=0)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    trainer.train()
    assert trainer.model is base and set(base.state_dict()) == set(start)
    moved = {k for k, v in base.state_dict().items() if not torch.equal(v, start[k])}
    assert moved and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in moved)
    final = trainer.state.log_history[-1]
    assert 0.0 <= final["smfa_masked_fraction"] == trainer.masked_fraction < 1.0
    steps = [h for h in trainer.state.log_history if "refusal_nll" in h]
    assert len(steps) == 2 and steps[1]["refusal_nll"] < steps[0]["refusal_nll"]  # the MFA learns to refuse


def test_refusals_come_from_the_column_or_the_given_list(tmp_path):
    forget = Dataset.from_list([{**r, "idk": f"No idea {i}."} for i, r in enumerate(ROWS[:4])])
    trainer, _ = _trainer(tmp_path, forget=forget, refusal_column="idk")
    tok = trainer.processing_class
    batch = trainer.data_collator([trainer.pairing[i] for i in range(4)])["forget"][CHOSEN_BATCH_KEY]
    decoded = [tok.decode(labels[labels != -100]) for labels in batch["labels"]]
    assert all(f"No idea {i}." in text for i, text in enumerate(decoded))
    trainer, _ = _trainer(tmp_path / "list", refusals=["Not telling."])
    batch = trainer.data_collator([trainer.pairing[i] for i in range(4)])["forget"][CHOSEN_BATCH_KEY]
    assert all("Not telling." in tok.decode(labels[labels != -100]) for labels in batch["labels"])


def test_bad_values_are_refused_with_their_fix(tmp_path):
    with pytest.raises(ValueError, match="anchor_k"):
        SMFAConfig(output_dir=str(tmp_path), anchor_k=-1.0)
    with pytest.raises(ValueError, match=r"retain_loss_type='kl': SMFA trains its retaining anchor"):
        SMFAConfig(output_dir=str(tmp_path), retain_loss_type="kl")
    with pytest.raises(ValueError, match="refusal_column .* or refusals .*, not both"):
        SMFAConfig(output_dir=str(tmp_path), refusal_column="idk", refusals=["No."])
    model, tok = tiny_llama(seed=0, corpus=NAMES + JOBS)
    args = SMFAConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    forget = Dataset.from_list(ROWS[:4])
    with pytest.raises(ValueError, match="SMFA needs `retain_dataset=`: its retaining anchor"):
        SMFATrainer(model=copy.deepcopy(model), args=args, train_dataset=forget, processing_class=tok)
    with pytest.raises(ValueError, match="a DoRA adapter"):
        SMFATrainer(model=copy.deepcopy(model), args=args, train_dataset=forget, retain_dataset=forget,
                    processing_class=tok, peft_config=LoraConfig(r=4, target_modules=TARGETS, use_dora=True))
    with pytest.raises(TypeError, match="must be a `peft.LoraConfig`"):
        SMFATrainer(model=copy.deepcopy(model), args=args, train_dataset=forget, retain_dataset=forget,
                    processing_class=tok, peft_config={"r": 4})
    assert not (tmp_path / "out").exists()  # refused before anything was written
