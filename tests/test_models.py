"""The generator model: HF import parity, incremental decoding, masking, save/load, bf16."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

from unittest import mock

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    PegasusConfig,
    PegasusForConditionalGeneration,
    T5Config,
)

from conftest import FROM_SCRATCH, REPO
from selfmem.common.config import load_config
from selfmem.models import ModelConfig, Seq2SeqModel
from selfmem.models.build import build_model
from selfmem.models.hf_import import import_hf
from selfmem.models.linear import weight_packing
from selfmem.models.selector import GeneratorEncoderBackbone
from selfmem.models.seq2seq import MultiheadAttention, slotted_positions

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

TINY_HF = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
               init_std=0.1, vocab_size=96)

# family -> (config, model class, sinusoidal positions); ids and activations differ on purpose
HF_FAMILIES = {
    "bart": (lambda: BartConfig(**TINY_HF, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                decoder_start_token_id=2, forced_eos_token_id=2),
             BartForConditionalGeneration, False),
    "mbart": (lambda: MBartConfig(**TINY_HF, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                  decoder_start_token_id=3, forced_eos_token_id=2),
              MBartForConditionalGeneration, False),
    "marian": (lambda: MarianConfig(**TINY_HF, pad_token_id=95, eos_token_id=0, decoder_start_token_id=95,
                                    forced_eos_token_id=0, activation_function="swish", scale_embedding=True),
               MarianMTModel, True),
    "pegasus": (lambda: PegasusConfig(**TINY_HF, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                      forced_eos_token_id=1, activation_function="relu", scale_embedding=True),
                PegasusForConditionalGeneration, True),
}


def padded(rows: list[list[int]], pad: int, width: int | None = None) -> torch.Tensor:
    """Right-pad ``rows`` with ``pad`` to ``width`` (default: the longest row)."""
    width = width or max(map(len, rows))
    return torch.tensor([row + [pad] * (width - len(row)) for row in rows])


def random_rows(lengths: list[int], eos: int, generator: torch.Generator) -> list[list[int]]:
    """Rows of ordinary tokens (no special ids), each closed by eos."""
    return [torch.randint(5, 40, (n - 1,), generator=generator).tolist() + [eos] for n in lengths]


@pytest.fixture(scope="module", params=sorted(HF_FAMILIES))
def hf_checkpoint(request, tmp_path_factory):
    """A tiny random HF model of one family, with every weight (layer norms, logits bias) randomised."""
    make_config, model_class, sinusoidal = HF_FAMILIES[request.param]
    torch.manual_seed(0)
    hf = model_class(make_config())
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not (sinusoidal and "embed_positions" in name):  # fixed tables, not saved
                p.add_(torch.randn_like(p) * 0.1)
        hf.final_logits_bias.normal_()
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return request.param, hf.eval(), directory


def hf_inputs(config) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = padded(random_rows([9, 6, 3], config.eos_token_id, g), config.pad_token_id)
    dec = torch.randint(5, 40, (3, 7), generator=g)
    dec[:, 0] = config.decoder_start_token_id
    return src, dec


@torch.no_grad()
def test_import_matches_hf_logits(hf_checkpoint):
    family, hf, directory = hf_checkpoint
    src, dec = hf_inputs(hf.config)
    expected = hf(input_ids=src, attention_mask=src.ne(hf.config.pad_token_id).long(), decoder_input_ids=dec).logits
    assert expected.std() > 0.5  # the comparison below must be able to fail

    for memory in ("none", "joint"):  # joint differs only in what the caller feeds the encoder
        model = import_hf(directory, memory=memory)
        assert not model.training
        assert model.config.memory == memory
        assert (model(src, dec) - expected).abs().max() < 1e-4, (family, memory)


@torch.no_grad()
def test_import_family_settings(hf_checkpoint):
    family, hf, directory = hf_checkpoint
    config = import_hf(directory).config
    assert config.pre_norm == (family in ("mbart", "pegasus"))
    assert config.final_layer_norm == (family in ("mbart", "pegasus"))
    assert config.layernorm_embedding == (family in ("bart", "mbart"))
    assert config.positions == ("sinusoidal" if family in ("marian", "pegasus") else "learned")
    assert config.position_offset == (2 if family in ("bart", "mbart") else 0)
    assert config.share_embeddings and config.tie_output and config.final_logits_bias
    assert (config.pad_id, config.eos_id, config.decoder_start_id) == (
        hf.config.pad_token_id, hf.config.eos_token_id, hf.config.decoder_start_token_id)
    if family == "marian":
        assert config.activation == "silu" and config.scale_embedding and config.bos_id == config.pad_id


@torch.no_grad()
def test_import_dual_copies_cross_attention_and_uses_memory(hf_checkpoint):
    _, hf, directory = hf_checkpoint
    src, dec = hf_inputs(hf.config)
    none = import_hf(directory)
    dual = import_hf(directory, memory="dual")
    for layer in dual.decoder.layers:
        for ours, theirs in ((layer.memory_attn, layer.encoder_attn),
                             (layer.memory_attn_layer_norm, layer.encoder_attn_layer_norm)):
            for p, q in zip(ours.parameters(), theirs.parameters()):
                assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()  # a copy, not a tie
    g = torch.Generator().manual_seed(2)
    memory = padded(random_rows([5, 8, 4], hf.config.eos_token_id, g), hf.config.pad_token_id)[:, None, :]
    assert (dual(src, dec, memory) - none(src, dec)).abs().max() > 1e-2


def test_import_rejects_unsupported_model_type(tmp_path):
    T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'t5'.*supported: bart, mbart, marian, pegasus"):
        import_hf(tmp_path)


# --- our own models -----------------------------------------------------------------

PAD, EOS, START = 0, 2, 1


def small_model(memory: str, **overrides) -> Seq2SeqModel:
    config = dict(vocab_size=48, d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn_dim=64,
                  max_positions=64, dropout=0.0, init_std=0.1, memory=memory, pad_id=PAD, eos_id=EOS,
                  decoder_start_id=START)
    torch.manual_seed(0)
    return Seq2SeqModel(ModelConfig(**{**config, **overrides})).eval()


SEP = 4  # ModelConfig's default sep_id; random_rows never draws it

# name -> (memory mode, overrides). joint: our defaults (post-norm, sinusoidal), then with
# slotted positions; dual: the BART/mBART-style switches
VARIANTS = {
    "joint": ("joint", {}),
    "joint-slots": ("joint", dict(source_slot=12, memory_slot=8)),
    "dual": ("dual", dict(pre_norm=True, positions="learned", position_offset=2, layernorm_embedding=True,
                          final_layer_norm=True, activation="gelu", final_logits_bias=True)),
}


def variant_model(variant: str) -> Seq2SeqModel:
    memory, overrides = VARIANTS[variant]
    return small_model(memory, **overrides)


def batch(memory: str, seed: int = 3):
    """Source (padded; for joint ``source sep memory eos``), decoder input and, for dual,
    memories (batch, 2, len), one slot empty."""
    g = torch.Generator().manual_seed(seed)
    if memory == "joint":
        memories = random_rows([3, 5, 1], EOS, g)
        src = padded([source[:-1] + [SEP] + memory for source, memory in zip(random_rows([7, 4, 2], EOS, g),
                                                                               memories)], PAD)
    else:
        src = padded(random_rows([7, 4, 2], EOS, g), PAD)
    dec = torch.randint(5, 40, (3, 6), generator=g)
    dec[:, 0] = START
    if memory != "dual":
        return src, dec, None
    first = padded(random_rows([5, 3, 6], EOS, g), PAD)
    second = padded(random_rows([4, 1, 1], EOS, g), PAD, width=first.size(1))
    second[1:] = PAD  # examples 1 and 2 have one memory only
    return src, dec, torch.stack([first, second], dim=1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_incremental_decoding_matches_forward(variant):
    model = variant_model(variant)
    memory = model.config.memory
    src, dec, mem = batch(memory)
    expected = model(src, dec, mem)

    encoder_out = model.encode(src, mem)
    logits, cache = model.decode_step(dec[:, :1], encoder_out)
    steps = [logits]
    for t in range(1, dec.size(1)):
        logits, cache = model.decode_step(dec[:, t:t + 1], encoder_out, cache)
        steps.append(logits)
    assert cache[0].length == dec.size(1)
    assert (torch.cat(steps, dim=1) - expected).abs().max() < 1e-5

    # a longer prefix first, then several new tokens at once (a partly causal mask)
    first, cache = model.decode_step(dec[:, :3], encoder_out)
    rest, _ = model.decode_step(dec[:, 3:], encoder_out, cache)
    assert (torch.cat([first, rest], dim=1) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_reorder_cache_and_encoder_out(variant):
    model = variant_model(variant)
    memory = model.config.memory
    src, dec, mem = batch(memory)
    expected = model(src, dec, mem)
    encoder_out = model.encode(src, mem)
    _, cache = model.decode_step(dec[:, :3], encoder_out)

    for index in (torch.tensor([2, 0, 1]), torch.arange(3).repeat_interleave(2)):  # permute; expand to beams
        moved_out = encoder_out.select(index)
        moved_cache = [layer.select(index, index) for layer in cache]
        logits, _ = model.decode_step(dec[index, 3:4], moved_out, moved_cache)
        assert (logits[:, 0] - expected[index, 3]).abs().max() < 1e-5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_one_source_row_serves_every_decoder_row(variant):
    """Scoring many targets of one source: the source (and memories) encoded once, the rows'
    queries stacked against it, give each row's logits of its own copy of the source."""
    model = variant_model(variant)
    src, dec, mem = batch(model.config.memory)
    rows = dec.size(0)
    expected = model(src[:1].expand(rows, -1), dec, None if mem is None else mem[:1].expand(rows, -1, -1))
    positions = torch.tensor([0, 4, 7, 15, 17])
    shared = model(src[:1], dec, None if mem is None else mem[:1], target_rows=positions)
    assert (shared - expected.flatten(0, 1)[positions]).abs().max() < 1e-5


def test_only_a_joint_model_reads_its_slots():
    # a model without joint memory numbers its positions straight through: a selector built on
    # its encoder cuts no input to a slot (a demo's no-memory twin is saved with the joint's slots)
    assert GeneratorEncoderBackbone.from_generator(small_model("none", source_slot=12, memory_slot=8)).slots \
        == (None, None)
    assert GeneratorEncoderBackbone.from_generator(small_model("joint", source_slot=12, memory_slot=8)).slots \
        == (10, 7)


def test_slotted_positions_pad_the_source_and_each_memory_to_its_slot():
    ids = torch.tensor([[9, 9, 9, SEP, 7, 7, SEP, 8, EOS, PAD],
                        [9, SEP, 7, 7, 7, 7, EOS, PAD, PAD, PAD],
                        [9, 9, EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD]])
    assert slotted_positions(ids, SEP, source_slot=10, memory_slot=5).tolist() == [
        [0, 1, 2, 3, 10, 11, 12, 15, 16, 17],
        [0, 1, 10, 11, 12, 13, 14, 15, 16, 17],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]


@torch.no_grad()
def test_joint_slots_keep_the_memory_at_one_distance_from_the_target():
    slotted = variant_model("joint-slots")
    continued = variant_model("joint")
    continued.load_state_dict(slotted.state_dict())
    g = torch.Generator().manual_seed(5)
    memory = torch.tensor(random_rows([6], EOS, g))
    for source_len in (2, 9):
        source = torch.tensor(random_rows([source_len], EOS, g))[:, :-1]
        joint = torch.cat([source, torch.tensor([[SEP]]), memory], dim=1)
        embedded = slotted.encoder.embed(joint, positions=slotted_positions(joint, SEP, 12, 8))
        # whatever the source's length, memory token i sits at position 12 + i
        assert torch.equal(embedded[:, source_len:], slotted.encoder.embed(memory, start=12))
        src, dec = padded(joint.tolist(), PAD), torch.tensor([[START, 9, 9]])
        assert (slotted(src, dec) - continued(src, dec)).abs().max() > 1e-3
    # without a separator the two position schemes are the same model
    src, dec, _ = batch("none")
    assert torch.equal(slotted(src, dec), continued(src, dec))
    # padding past the last slot stays inside the position table, and changes nothing
    wide = torch.cat([torch.tensor([[9, SEP] + [7] * 7 + [EOS]]), torch.full((1, 50), PAD)], dim=1)
    torch.testing.assert_close(slotted(wide, dec), slotted(wide[:, :10], dec), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="source_slot and memory_slot are both 0 or both positive"):
        small_model("joint", source_slot=12)


@torch.no_grad()
def test_dual_memory_padding_changes_nothing():
    model = variant_model("dual")
    src, dec, mem = batch("dual")
    one_slot = mem[:, :1]
    expected = model(src, dec, one_slot)
    wider = torch.cat([one_slot, torch.full((3, 1, 4), PAD)], dim=2)
    empty_slot = torch.full_like(wider, PAD)
    for memory in (wider, torch.cat([wider, empty_slot], dim=1), torch.cat([empty_slot, wider], dim=1)):
        assert (model(src, dec, memory) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_source_padding_changes_nothing(variant):
    model = variant_model(variant)
    memory = model.config.memory
    src, dec, mem = batch(memory)
    wider = torch.cat([src, torch.full((3, 5), PAD)], dim=1)
    assert (model(wider, dec, mem) - model(src, dec, mem)).abs().max() < 1e-5


@torch.no_grad()
def test_dual_memory_changes_output():
    model = variant_model("dual")
    src, dec, mem = batch("dual")
    other = mem.clone()
    other[:, 0, 0] = (other[:, 0, 0] + 1 - 5) % 35 + 5  # another ordinary token first
    diff = (model(src, dec, other) - model(src, dec, mem)).abs().amax(dim=(1, 2))
    assert (diff > 1e-3).all()


def test_memory_ids_required_exactly_for_dual():
    src, dec, mem = batch("dual")
    with pytest.raises(ValueError, match="memory_ids"):
        small_model("dual")(src, dec)
    with pytest.raises(ValueError, match="memory_ids"):
        small_model("joint")(src, dec, mem)


def test_positions_beyond_max_are_an_error():
    model = small_model("none", max_positions=8)
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.full((1, 9), 7), torch.full((1, 2), START))


def test_initialisation():
    model = small_model("none", init_std=0.05)
    embed = model.encoder.embed_tokens.weight
    assert torch.equal(embed[PAD], torch.zeros(32))
    assert abs(embed.std().item() - 0.05) < 0.01
    fc1 = model.encoder.layers[0].fc1
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias)) and abs(fc1.weight.std().item() - 0.05) < 0.01


def test_generator_config_sets_the_slots_to_the_length_budgets():
    tokenizer = SimpleNamespace(vocab_size=48, pad_id=PAD, bos_id=START, eos_id=EOS, sep_id=SEP)
    slotted = build_model(load_config(CONFIGS / "demo.yaml", [*FROM_SCRATCH, "generator.joint_positions=slots",
                                                             "generator.max_source_len=40"]), tokenizer)
    assert (slotted.config.source_slot, slotted.config.memory_slot) == (40, 64)
    continued = build_model(load_config(CONFIGS / "demo.yaml", [*FROM_SCRATCH, "generator.joint_positions=continue"]),
                            tokenizer)
    assert (continued.config.source_slot, continued.config.memory_slot) == (0, 0)


# --- save / load --------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    dict(memory="dual"),  # shared embeddings, tied output
    dict(memory="none", share_embeddings=False, tie_output=False, final_logits_bias=True,
         positions="learned", position_offset=2),
], ids=["shared", "separate"])
@torch.no_grad()
def test_save_load_round_trip(tmp_path, overrides):
    model = small_model(**overrides)
    if model.final_logits_bias is not None:
        model.final_logits_bias.normal_()
    src, dec, mem = batch(overrides["memory"])
    model.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]

    loaded = Seq2SeqModel.load(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(src, dec, mem), model(src, dec, mem))
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert loaded.num_parameters() == model.num_parameters()

    encoder_embed, decoder_embed = loaded.encoder.embed_tokens.weight, loaded.decoder.embed_tokens.weight
    shared = overrides.get("share_embeddings", True)
    assert (encoder_embed.data_ptr() == decoder_embed.data_ptr()) == shared
    encoder_embed[7] += 1.0  # a tie must survive: the decoder sees the change
    assert torch.equal(decoder_embed[7], encoder_embed[7]) == shared


def test_num_parameters_counts_shared_weights_once():
    shared = small_model("none")
    separate = small_model("none", share_embeddings=False, tie_output=False)
    assert separate.num_parameters() - shared.num_parameters() == 2 * 48 * 32
    dual = small_model("dual")
    assert dual.num_parameters() - shared.num_parameters() == 2 * (4 * (32 * 32 + 32) + 2 * 32)


def test_config_json_round_trip_and_unknown_keys(tmp_path):
    config = ModelConfig(vocab_size=100, memory="dual", activation="silu")
    config.save(tmp_path)
    assert ModelConfig.load(tmp_path) == config
    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, "n_heads": 4}))
    with pytest.raises(ValueError, match="unknown key.*n_heads.*valid keys: vocab_size"):
        ModelConfig.load(tmp_path)
    # a wrong value or a missing key: the message names the file too
    path = re.escape(str(tmp_path / "config.json"))
    (tmp_path / "config.json").write_text(json.dumps({**values, "d_model": 30, "heads": 4}))
    with pytest.raises(ValueError, match=f"^{path}: ModelConfig: d_model 30 is not divisible by heads 4$"):
        ModelConfig.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in values.items() if k != "vocab_size"}))
    with pytest.raises(ValueError, match=f"^{path}: .*missing 1 required positional argument: 'vocab_size'$"):
        ModelConfig.load(tmp_path)
    with pytest.raises(ValueError, match="memory"):
        ModelConfig(vocab_size=100, memory="both")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=100, d_model=30, heads=4)


# --- low precision ------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_bf16_autocast_heavy_padding_follows_fp32(variant):
    model = variant_model(variant)
    memory = model.config.memory
    g = torch.Generator().manual_seed(4)
    src = padded(random_rows([1, 2, 30], EOS, g), PAD, width=48)
    if memory == "joint":
        src[2, 10] = SEP  # a source of 10 tokens and a memory of 19
    dec = torch.full((3, 5), START)
    mem = None
    if memory == "dual":
        mem = torch.full((3, 3, 40), PAD)
        mem[:, 0, 0] = EOS  # an empty memory is just eos; the other slots are all padding
    reference = model(src, dec, mem)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, dec, mem)
        encoder_out = model.encode(src, mem)
        step, _ = model.decode_step(dec[:, :1], encoder_out)
    assert logits.dtype == torch.float32
    # fp32's logits up to bf16's rounding (8 bits of mantissa, about 0.4%, over a few layers;
    # measured: at most 0.01 on logits up to 2.7), where a fully padded row would give NaN
    torch.testing.assert_close(logits, reference, atol=0.05, rtol=0.02)
    torch.testing.assert_close(step, reference[:, :1], atol=0.05, rtol=0.02)


def test_importing_the_models_turns_cudnn_attention_off():
    # cuDNN attention builds a plan per new shape; token-budget batches and beam steps change shape every call
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_fused_projections_equal_the_separate_ones_exactly(variant):
    model = variant_model(variant)
    x = torch.randn(3, 7, model.config.d_model, generator=torch.Generator().manual_seed(1))
    # PyTorch's own kernels on both sides (the packed CPU path is compared in test_linear.py)
    with weight_packing(False):
        for attention in (module for module in model.modules() if isinstance(module, MultiheadAttention)):
            q, kv = attention.queries_keys_values(x)
            k, v = kv.unbind(1)
            assert torch.equal(q, attention.q_proj(x))
            assert torch.equal(k, attention._split_heads(attention.k_proj(x)))
            assert torch.equal(v, attention._split_heads(attention.v_proj(x)))
            assert all(torch.equal(a, b) for a, b in zip(attention.keys_values(x), (k, v)))
    # the weights stay separate parameters: checkpoints keep their layout
    assert {"encoder.layers.0.self_attn.q_proj.weight", "decoder.layers.0.encoder_attn.k_proj.bias",
            "decoder.layers.0.encoder_attn.v_proj.weight"} <= model.state_dict().keys()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_the_training_benchs_old_paths_still_compute_this_model(variant):
    # bench/train.py times the model with its paths from before issue 20 patched in; a
    # refactor of the model must keep those patches meaningful (or fail here, not in the bench)
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    model = variant_model(variant)
    src, dec, mem = batch(model.config.memory)
    expected = model(src, dec, mem)
    with mock.patch.object(torch.nn.functional, "linear", wraps=torch.nn.functional.linear) as separate, \
            bench_train.old_paths():
        got = model(src, dec, mem)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # every product with one layer's own weight: none with weights stacked from several
    parameters = {id(p) for p in model.parameters()}
    assert separate.call_count > 0 and all(id(call.args[1]) in parameters for call in separate.call_args_list)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@torch.no_grad()
def test_target_rows_give_those_positions_logits(variant):
    model = variant_model(variant)
    src, dec, mem = batch(model.config.memory)
    dec[1, 4:] = PAD
    dec[2, 2:] = PAD
    rows = dec.flatten().ne(PAD).nonzero().squeeze(1)
    expected = model(src, dec, mem).flatten(0, 1)[rows]
    assert (model(src, dec, mem, target_rows=rows) - expected).abs().max() < 1e-6


def test_slotted_positions_beyond_max_are_an_error():
    model = small_model("joint", source_slot=12, memory_slot=8, max_positions=24)
    # the second memory starts at position 20: its five tokens and the eos after them reach 25
    src = torch.tensor([[7, 8, SEP, 9, SEP, 10, 11, 12, 13, 14, EOS]])
    with pytest.raises(ValueError, match="a sequence reaching position 26 exceeds max_positions = 24"):
        model(src, torch.full((1, 2), START))
    model(src[:, 3:], torch.full((1, 2), START))  # with one memory it fits
