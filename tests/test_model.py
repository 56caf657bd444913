"""S2VT: shapes, gradients, the fused path against the step loop, and padding."""

from __future__ import annotations

import pytest
import torch

from pipeline.model import S2VT, S2VTConfig, masked_loss

VARIANTS = {"s2vt": {}, "luong": {"attention": "luong"}, "bahdanau": {"attention": "bahdanau"},
            "bidirectional": {"bidirectional": True}, "bidirectional-luong": {"bidirectional": True,
                                                                                "attention": "luong"},
            "motion": {"motion": 4.0}}


def _model(**kw) -> S2VT:
    torch.manual_seed(0)
    cfg = S2VTConfig(feature_dim=7, vocab_size=11, max_len=5, hidden=16, embed=8, dropout=0.1, **kw)
    return S2VT(cfg)


def _batch(B=3, F=6):
    features = torch.randn(B, F, 7)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 4, 2, 0, 0, 0, 0], [1, 8, 9, 10, 4, 5, 2]])[:B]
    return features, tokens  # tokens: (B, T + 1), T = max_len + 1


@pytest.mark.parametrize("teacher_forcing", [1.0, 0.5])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_every_variant(variant, teacher_forcing):
    model = _model(**VARIANTS[variant]).train()
    features, tokens = _batch()
    logits = model(features, tokens[:, :-1], teacher_forcing=teacher_forcing)
    assert logits.shape == (3, 6, 11)
    loss = masked_loss(logits, tokens[:, 1:], pad_id=0)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no gradient"
        assert p.grad.abs().sum() > 0 or name == "embed.weight", f"{name} has an all-zero gradient"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "bahdanau"])  # bahdanau always steps
def test_fused_training_path_equals_the_step_loop(variant):
    model = _model(**VARIANTS[variant]).eval()
    features, tokens = _batch()
    inputs = tokens[:, :-1]
    with torch.no_grad():
        fused = model(features, inputs)
        memory, h1_words, state = model.encode(features)
        gates = model.word_gates(h1_words)
        looped = []
        for t in range(inputs.shape[1]):
            logits, state = model.step(inputs[:, t], gates[:, t], state, memory)
            looped.append(logits)
    torch.testing.assert_close(fused, torch.stack(looped, dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_frame_steps_skip_the_zero_inputs_and_give_the_same_state(variant):
    """The second LSTM's frame steps run on the h1 columns only; feeding the zeros to nn.LSTM agrees."""
    model = _model(**VARIANTS[variant]).eval()
    features, _ = _batch()
    with torch.no_grad():
        memory, _, (h, c) = model.encode(features)
        B, F, E = memory.shape
        no_context = model.decoder.input_size - model.cfg.embed - E  # Bahdanau's context part
        inputs = torch.cat([memory.new_zeros(B, F, model.cfg.embed), memory, memory.new_zeros(B, F, no_context)], -1)
        _, (h_full, c_full) = model.decoder(inputs)  # [no word, h1, no context] at every frame step
    torch.testing.assert_close(h, h_full[0])
    torch.testing.assert_close(c, c_full[0])


@pytest.mark.parametrize("variant", ["s2vt", "luong"])
def test_padding_changes_nothing(variant):
    model = _model(**VARIANTS[variant]).eval()
    features, tokens = _batch()
    targets = tokens[:, 1:]
    noisy = tokens.clone()
    pad = noisy == 0
    noisy[pad] = torch.randint(3, 11, (int(pad.sum()),))  # garbage where padding was
    with torch.no_grad():
        clean_logits = model(features, tokens[:, :-1])
        noisy_logits = model(features, noisy[:, :-1])
    real = targets != 0  # positions whose target is a real token or <eos>
    torch.testing.assert_close(clean_logits[real], noisy_logits[real])
    assert masked_loss(clean_logits, targets, 0) == masked_loss(noisy_logits, targets, 0)
    # the loss is the mean over real tokens only
    manual = torch.nn.functional.cross_entropy(clean_logits[real], targets[real])
    torch.testing.assert_close(masked_loss(clean_logits, targets, 0), manual)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_shapes(variant):
    model = _model(**VARIANTS[variant]).eval()
    tokens = model.generate(torch.randn(4, 6, 7))
    assert tokens.shape[0] == 4 and 1 <= tokens.shape[1] <= model.cfg.steps and tokens.dtype == torch.long


def test_generate_pads_after_eos_and_stops_when_all_ended(monkeypatch):
    model = _model().eval()
    calls = []

    def scripted_step(words, gates_t, state, memory):  # video i says word 5 until it says <eos> at step i
        t = len(calls)
        calls.append(words.clone())
        logits = torch.zeros(len(words), 11)
        logits[:, 5] = 1.0
        logits[t, 2] = 2.0 if t < len(words) else 0.0
        return logits, state

    monkeypatch.setattr(model, "step", scripted_step)
    tokens = model.generate(torch.randn(3, 6, 7)).tolist()
    assert tokens == [[2, 0, 0], [5, 2, 0], [5, 5, 2]]
    assert len(calls) == 3, "generation stops once every caption has ended"
    assert calls[0].tolist() == [1, 1, 1] and calls[2].tolist() == [0, 2, 5]  # ended captions feed <pad>


def test_generate_is_greedy_over_forward():
    model = _model().eval()
    features, _ = _batch(B=1)
    tokens = model.generate(features)[0].tolist()
    inputs = torch.tensor([[1] + tokens[:-1] + [0] * (model.cfg.steps - len(tokens))])
    with torch.no_grad():
        logits = model(features, inputs)
    assert logits[0, : len(tokens)].argmax(-1).tolist() == tokens


def test_unknown_attention():
    with pytest.raises(ValueError, match="luong"):
        _model(attention="transformer")
