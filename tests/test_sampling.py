"""Epsilon sampling: the draws follow the model's (truncated) distribution, are scored as
teacher forcing scores them, and depend only on each row's seed."""

from __future__ import annotations

import collections
import itertools

import pytest
import torch
from test_beam import EOS, PAD, START, random_sources, tiny_model

from selfmem.infer.beam import BeamSettings, beam_search
from selfmem.infer.sampling import SampleSettings, epsilon_sample, uniform_noise


@torch.no_grad()
def teacher_forced(model, src: torch.Tensor, memory, tokens: list[int], ends: bool) -> list[torch.Tensor]:
    """The model's next-token probabilities at each step of ``tokens`` (+ eos where it ended)."""
    seq = tokens + [EOS] if ends else tokens
    encoder_out = model.encode(src[None], None if memory is None else memory[None])
    logits, _ = model.decode_step(torch.tensor([[START] + seq[:-1]]), encoder_out)
    return list(torch.softmax(logits[0], dim=-1))


def test_samples_follow_the_model_distribution():
    model = tiny_model(vocab_size=5)
    src = torch.tensor([[4, 3, 4, EOS]])
    settings = SampleSettings(num_samples=20000, epsilon=0.0, max_len=2)
    drawn = epsilon_sample(model, src, None, settings, START, EOS, seeds=torch.tensor([7]))[0]
    counts = collections.Counter(tuple(h.tokens) + ((EOS,) if len(h.tokens) < 2 else ()) for h in drawn)
    # the exact probability of every sequence the rules allow: eos-ended or cut at max_len
    expected = {}
    for length in (1, 2):
        for seq in itertools.product(range(5), repeat=length):
            if EOS in seq[:-1] or (length == 1 and seq[-1] != EOS):
                continue
            steps = teacher_forced(model, src[0], None, list(seq), ends=False)
            expected[seq] = float(torch.prod(torch.stack([steps[t][token] for t, token in enumerate(seq)])))
    assert sum(expected.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(counts) <= set(expected)
    # 20,000 draws: a frequency's standard error is at most 0.0036
    assert max(abs(counts[seq] / 20000 - p) for seq, p in expected.items()) < 0.012


def test_scores_are_teacher_forced_log_probabilities_and_epsilon_truncates():
    model = tiny_model(vocab_size=12)
    src = random_sources(6, 12, EOS, PAD, seed=3)
    settings = SampleSettings(num_samples=8, epsilon=0.1, max_len=7, min_len=1)
    drawn = epsilon_sample(model, src, None, settings, START, EOS, seeds=torch.arange(6))
    for row, samples in enumerate(drawn):
        assert len(samples) == 8
        for h in samples:
            ended = len(h.tokens) < settings.max_len
            probs = teacher_forced(model, src[row], None, h.tokens, ended)
            seq = h.tokens + [EOS] if ended else h.tokens
            assert len(h.tokens) >= settings.min_len
            for t, token in enumerate(seq):
                p = probs[t].clone()
                if t < settings.min_len:  # eos banned, the others not renormalised (as in beam search)
                    p[EOS] = 0.0
                assert p[token] >= settings.epsilon or token == int(p.argmax())
            log_p = sum(float(torch.log(probs[t][token])) for t, token in enumerate(seq))
            assert h.score == pytest.approx(log_p / len(seq), abs=1e-5)
    assert len({tuple(h.tokens) for samples in drawn for h in samples}) > len(drawn)  # they differ


def test_epsilon_near_one_is_greedy_search():
    model = tiny_model(vocab_size=12)
    src = random_sources(5, 12, EOS, PAD, seed=4)
    drawn = epsilon_sample(model, src, None, SampleSettings(num_samples=3, epsilon=0.999, max_len=9),
                           START, EOS, seeds=torch.arange(5))
    greedy = beam_search(model, src, None, BeamSettings(num_beams=1, max_len=9), START, EOS)
    for samples, (best,) in zip(drawn, greedy):
        assert [h.tokens for h in samples] == [best.tokens] * 3
        assert [h.score for h in samples] == pytest.approx([best.score] * 3, abs=1e-5)


def test_a_rows_samples_depend_only_on_its_seed():
    model = tiny_model(vocab_size=12)
    src = random_sources(8, 12, EOS, PAD, seed=5)
    seeds = torch.tensor([11, 12, 13, 14, 15, 16, 17, 18])
    settings = SampleSettings(num_samples=6, epsilon=0.02, max_len=10)
    together = epsilon_sample(model, src, None, settings, START, EOS, seeds=seeds)
    for i in range(len(src)):
        length = int(src[i].ne(PAD).sum())
        alone = epsilon_sample(model, src[i:i + 1, :length], None, settings, START, EOS, seeds=seeds[i:i + 1])[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-5)
    reseeded = epsilon_sample(model, src, None, settings, START, EOS, seeds=seeds + 100)
    assert [[h.tokens for h in s] for s in reseeded] != [[h.tokens for h in s] for s in together]


def test_one_source_with_several_memories_samples_like_repeated_sources():
    model = tiny_model(vocab_size=12, memory="dual")
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD]])
    memory = torch.tensor([[[5, 5, EOS]], [[9, 6, EOS]], [[7, EOS, PAD]]])
    source_index = torch.tensor([0, 0, 1])
    settings = SampleSettings(num_samples=4, epsilon=0.02, max_len=6)
    seeds = torch.tensor([3, 4, 5])
    shared = epsilon_sample(model, src, memory, settings, START, EOS, seeds, source_index=source_index)
    repeated = epsilon_sample(model, src[source_index], memory, settings, START, EOS, seeds)
    assert [[h.tokens for h in s] for s in shared] == [[h.tokens for h in s] for s in repeated]


def test_noise_is_uniform_and_the_settings_are_checked():
    noise = uniform_noise(torch.arange(200), 500)
    assert float(noise.min()) > 0 and float(noise.max()) < 1
    assert float(noise.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(torch.corrcoef(torch.stack([noise[:, 0], noise[:, 1]]))[0, 1]) == pytest.approx(0.0, abs=0.2)
    with pytest.raises(ValueError, match="num_samples must be at least 1, got 0"):
        SampleSettings(num_samples=0)
    with pytest.raises(ValueError, match=r"epsilon must be in \[0, 1\), got 1.0"):
        SampleSettings(epsilon=1.0)
    with pytest.raises(ValueError, match="need 0 <= min_len < max_len, got min_len 4, max_len 4"):
        SampleSettings(min_len=4, max_len=4)
