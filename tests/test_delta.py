"""Delta: safetensors round trip, arithmetic, model checks, bad files, original attribute-control .pt files."""

from pathlib import Path

import pytest
import torch

from reprolib.conditioning import TextConditioning
from reprolib.delta import Delta, DeltaMismatch
from reprolib.generate import apply_edits
from reprolib.tokens import token_span

ORIGINAL = Path("/work/shared/reference/attribute-control/pretrained_deltas")


def random_delta(dims, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    return Delta({k: torch.randn(d, generator=g) for k, d in dims.items()}, meta)


def test_round_trip_keeps_vectors_and_metadata(tmp_path):
    d = random_delta(
        {"clip_l": 16, "openclip_g": 32}, tag="shapes/size", family="sdxl", n_pairs=84, method="contrastive"
    )
    back = Delta.load(d.save(tmp_path / "sub" / "size.safetensors"))
    assert set(back.vectors) == {"clip_l", "openclip_g"}
    for k in d.vectors:
        assert torch.equal(back.vectors[k], d.vectors[k])
    assert back.meta["tag"] == "shapes/size" and back.meta["n_pairs"] == 84  # ints survive, not as strings
    assert back.meta["dims"] == {"clip_l": 16, "openclip_g": 32}


def test_arithmetic():
    a, b = random_delta({"clip": 8}, 0), random_delta({"clip": 8}, 1)
    assert torch.allclose((a + b).vectors["clip"], a.vectors["clip"] + b.vectors["clip"])
    assert torch.allclose((a - b).vectors["clip"], a.vectors["clip"] - b.vectors["clip"])
    assert torch.allclose((2 * a).vectors["clip"], (a * 2).vectors["clip"])
    assert torch.allclose((-a).vectors["clip"], -a.vectors["clip"])
    assert (2 * a).norm() == pytest.approx(2 * a.norm())
    with pytest.raises(DeltaMismatch, match="encoders"):
        a + random_delta({"clip_l": 8})


def test_check_names_both_sides(sd15, sdxl):
    cond = TextConditioning(sd15)
    random_delta(cond.dims).check(cond)  # fits: no error
    wrong = random_delta({"clip": 7}, model="elsewhere")
    with pytest.raises(DeltaMismatch) as e:
        wrong.check(cond)
    assert "elsewhere" in str(e.value) and str(cond.dims) in str(e.value)
    with pytest.raises(DeltaMismatch):
        random_delta(TextConditioning(sdxl).dims).check(cond)


def test_delta_remembers_the_weights_it_was_made_with(sd15, tmp_path):
    """Same dims but another training (e.g. a retrained shapes model) is refused; a bf16 copy is not."""
    from reprolib.contrastive import contrastive_delta

    delta = Delta.load(contrastive_delta(sd15, "shapes/size").save(tmp_path / "size.safetensors"))
    cond = TextConditioning(sd15)
    delta.check(cond)
    sd15.text_encoder.to(torch.bfloat16)
    delta.check(TextConditioning(sd15))  # the same weights, rounded
    sd15.text_encoder.to(torch.float32)
    with torch.no_grad():
        sd15.text_encoder.get_input_embeddings().weight.mul_(1.5)  # "retrained"
    with pytest.raises(DeltaMismatch, match="other 'clip' text-encoder weights"):
        delta.check(TextConditioning(sd15))
    Delta(delta.vectors, {}).check(TextConditioning(sd15))  # no fingerprint recorded (original .pt): dims only


def test_corrupt_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        Delta.load(bad)
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="tensors-only"):
        Delta.load(bad_pt)
    wrong_keys = tmp_path / "wrong.pt"
    torch.save({"delta": {"something": torch.zeros(3)}}, wrong_keys)
    with pytest.raises(ValueError, match="no attribute-control delta"):
        Delta.load(wrong_keys)
    with pytest.raises(FileNotFoundError):
        Delta.load(tmp_path / "missing.safetensors")


class _Payload:  # a pickle needing code: must not be unpickled
    pass


def test_pickled_code_is_refused(tmp_path):
    f = tmp_path / "code.pt"
    torch.save({"delta": _Payload()}, f)
    with pytest.raises(ValueError, match="tensors-only"):
        Delta.load(f)


@pytest.mark.skipif(not ORIGINAL.is_dir(), reason="original attribute-control deltas not present")
def test_original_pt_files(sdxl):
    files = sorted(ORIGINAL.glob("*.pt"))
    assert len(files) == 34
    cond = TextConditioning(sdxl)
    prompt = "a red circle and a blue square"
    emb = cond.encode(prompt)
    for f in files:
        d = Delta.load(f)
        assert {k: v.numel() for k, v in d.vectors.items()} == {"clip_l": 768, "openclip_g": 1280}, f.name
        assert d.meta["family"] == "sdxl" and d.meta["tag"] == f.stem
        assert all(torch.isfinite(v).all() and v.norm() > 0 for v in d.vectors.values())
        with pytest.raises(DeltaMismatch, match="768"):  # real SDXL widths vs the tiny pipeline's
            apply_edits(cond, emb, [(d, "circle", 1.0)])
    fitting = random_delta(cond.dims)
    out = apply_edits(cond, emb, [(fitting, "circle", 1.0)])
    pos = token_span(emb.tokens[0], "circle")
    for k in cond.dims:
        diff = (out.states[k] - emb.states[k])[0]
        assert torch.allclose(diff[pos], fitting.vectors[k].expand(len(pos), -1))
        rest = [i for i in range(diff.shape[0]) if i not in pos]
        assert diff[rest].abs().max() == 0


@pytest.mark.skipif(not ORIGINAL.is_dir(), reason="original attribute-control deltas not present")
def test_original_pt_resaves_as_safetensors(tmp_path):
    d = Delta.load(ORIGINAL / "person_age.pt")
    back = Delta.load(d.save(tmp_path / "person_age.safetensors"))
    assert back.meta["family"] == "sdxl" and all(torch.equal(back.vectors[k], d.vectors[k]) for k in d.vectors)
