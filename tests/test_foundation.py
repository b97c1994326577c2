"""Device choice, pipeline loading (and its errors), the text-conditioning adapter, tiny pipelines, generate()."""

import json
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import yaml

import reprolib
from reprolib.conditioning import TextConditioning
from reprolib.device import pick_device, pick_dtype
from reprolib.generate import generate, initial_latents
from reprolib.pipelines import KNOWN_MODELS, ModelNotAvailable, load_pipeline, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_device_and_dtype_choice(monkeypatch):
    monkeypatch.delenv("REPROLIB_DEVICE", raising=False)
    dev = pick_device()
    assert dev.type in ("cuda", "mps", "cpu")
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("REPROLIB_DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype(torch.device("cpu"), "fp8")


def test_known_models_resolve():
    assert resolve("sdxl") == KNOWN_MODELS["sdxl"]
    assert resolve("someone/some-model") == "someone/some-model"


def test_tiny_names_load_random_pipelines():
    """The scripts' offline check models come through the one loader, fp32 unless asked."""
    pipe = load_pipeline("tiny-sdxl", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and pipe.unet.dtype == torch.float32
    assert load_pipeline("tiny-sd21", device="cpu", dtype="bf16").unet.dtype == torch.bfloat16


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailable, match="not a diffusers pipeline"):
        load_pipeline(tmp_path)


def test_missing_hub_model_offline_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing can be found
    with pytest.raises(ModelNotAvailable, match="hf download"):
        load_pipeline("sd15")
    with pytest.raises(ModelNotAvailable, match="not in the local Hugging Face cache"):
        load_pipeline("nobody/no-such-model-xyz")


def test_local_folder_round_trip(sd15, tmp_path):
    sd15.save_pretrained(tmp_path / "tiny")
    pipe = load_pipeline(tmp_path / "tiny", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32


def test_local_folder_loads_without_progress_bars(sd15, tmp_path, monkeypatch, capfd):
    """#18: a local model loads with no "Loading pipeline components" bar (a stray widget in JupyterLab);
    the bars are switched back on after, for long work."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    monkeypatch.delenv("CI", raising=False)
    sd15.save_pretrained(tmp_path / "tiny")
    dlog.enable_progress_bar(), tlog.enable_progress_bar()
    capfd.readouterr()
    load_pipeline(tmp_path / "tiny", device="cpu")
    assert "Loading" not in capfd.readouterr().err
    assert dlog.is_progress_bar_enabled() and tlog.is_progress_bar_enabled()


def test_conditioning_sd(sd15):
    c = TextConditioning(sd15)
    assert c.family == "sd" and list(c.dims) == ["clip"]
    e = c.encode(["a red circle", "a big blue square"])
    assert e.states["clip"].shape == (2, 77, 32) and e.pooled is None
    # the states are exactly what the pipeline's own encode_prompt computes
    ref = sd15.encode_prompt("a red circle", "cpu", 1, False)[0]
    torch.testing.assert_close(e.states["clip"][:1], ref)


def test_conditioning_sdxl(sdxl):
    c = TextConditioning(sdxl)
    assert c.family == "sdxl" and c.dims == {"clip_l": 16, "openclip_g": 32}
    e = c.encode("a red circle")
    assert e.context().shape == (1, 77, 48) and e.pooled.shape == (1, 32)
    ref, _, pooled, _ = sdxl.encode_prompt("a red circle", device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(e.context(), ref)
    torch.testing.assert_close(e.pooled, pooled)
    added = c.added_cond(e, 64, 64)
    assert added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    neg = c.encode_negative(None)
    assert neg.context().abs().sum() == 0  # SDXL's zeros for an absent negative prompt


def test_tokenize_offsets(sd15):
    t = TextConditioning(sd15).tokenize("A big Red circle")
    words = [t.text[a:b].lower() for (a, b), s in zip(t.offsets, t.special) if not s]
    assert words == ["a", "big", "red", "circle"]
    assert t.special[0] and t.special[5] and not any(t.special[1:5])


@pytest.mark.parametrize("family", ["sd15", "sd21", "sdxl"])
def test_generate_reproduces_pipe(family, request):
    pipe = request.getfixturevalue(family)
    lat = initial_latents(pipe, [3], 64, 64)
    ref = pipe(
        "a red circle",
        num_inference_steps=3,
        latents=lat.clone(),
        output_type="np",
        height=64,
        width=64,
        guidance_scale=5.0,
    ).images[0]
    ours = generate(pipe, "a red circle", seed=3, steps=3, guidance_scale=5.0, output_type="np")
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_generate_batch_matches_single(sd15):
    one = generate(sd15, "a red circle", seed=5, steps=2, output_type="np")
    many = generate(sd15, ["a blue square", "a red circle"], seed=[1, 5], steps=2, output_type="np")
    np.testing.assert_allclose(many[1], one, atol=1e-5)
    with pytest.raises(ValueError, match="prompts and"):
        generate(sd15, ["a", "b"], seed=[1, 2, 3], steps=2)


def test_tiny_pipelines_are_fast_and_offline():
    import time

    from reprolib.tiny import tiny_pipeline

    t = time.perf_counter()
    tiny_pipeline("sdxl"), tiny_pipeline("sd21")
    assert time.perf_counter() - t < 5  # well under a second each when the machine is idle


def test_real_bpe_tokenizer(bpe):
    assert bpe("a photo of an old man").input_ids == [49406, 320, 1125, 539, 550, 896, 786, 49407]
    from reprolib.tiny import tiny_sdxl

    pipe = tiny_sdxl(tokenizer=bpe, tokenizer_2=bpe)
    toks = TextConditioning(pipe).tokenize("An astronaut riding a green horse")
    assert "astronaut" in "".join(toks.tokens[1:4]).replace("</w>", "")


def test_public_api_is_small():
    for name in ("load_pipeline", "generate", "Delta", "TextConditioning", "token_span"):
        assert hasattr(reprolib, name)


def _deps(spec: list[str]) -> dict[str, str]:
    import re

    out = {}
    for s in spec:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", s)
        out[m.group(1).lower()] = m.group(2).replace(" ", "")
    return out


def environment_mismatches(pyproject: dict, env: dict) -> list[str]:
    """What environment.yml's pip section says differently from pyproject's dependencies."""
    wanted = _deps(pyproject["project"]["dependencies"])
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d), [])
    have = _deps([p for p in pip if not p.startswith("-")])
    problems = [f"{k}{v} missing from environment.yml" for k, v in wanted.items() if k not in have]
    problems += [
        f"{k}: pyproject says '{v}', environment.yml says '{have[k]}'"
        for k, v in wanted.items()
        if k in have and have[k] != v
    ]
    problems += [f"{k} in environment.yml but not in pyproject" for k in have if k not in wanted]
    return problems


def test_environment_yml_agrees_with_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert environment_mismatches(py, env) == []
    assert "torch==2.13.0" in py["project"]["dependencies"]
    py_ver = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert py_ver, "environment.yml must pin a python version"


def test_environment_check_catches_disagreement():
    py = {"project": {"dependencies": ["torch==2.13.0", "diffusers>=0.35"]}}
    env = {"dependencies": ["python=3.11", {"pip": ["torch==2.5.0", "diffusers>=0.35", "extra"]}]}
    problems = environment_mismatches(py, env)
    assert any("torch" in p for p in problems) and any("extra" in p for p in problems)


def test_shapes_model_loads_if_built(shapes_pipe):
    assert type(shapes_pipe).__name__ == "StableDiffusionPipeline"
    card = json.loads((Path(reprolib.pipelines.SHAPES_DIR) / "training.json").read_text())
    assert card["unet_steps_done"] > 0


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_stop_and_resume_equals_one_call(sd15, scheduler):
    """generate(until=k) then generate(resume=...) gives the uninterrupted image, even for a
    multistep scheduler whose history must travel with the latents; one Partial resumes many times."""
    import diffusers

    from reprolib.contrastive import contrastive_delta
    from reprolib.generate import Partial

    sd15.scheduler = getattr(diffusers, scheduler).from_config(sd15.scheduler.config)
    edits = [(contrastive_delta(sd15, "shapes/size"), "circle", 3.0)]
    kw = dict(seed=4, steps=5, delay=0.4, output_type="np")
    whole = generate(sd15, "a red circle", edits=edits, **kw)
    part = generate(sd15, "a red circle", until=2, **kw)  # the unedited first 40%
    assert isinstance(part, Partial) and part.step == 2
    for _ in range(2):
        np.testing.assert_array_equal(generate(sd15, "a red circle", edits=edits, resume=part, **kw), whole)
    plain = generate(sd15, "a red circle", **kw)
    np.testing.assert_array_equal(generate(sd15, "a red circle", resume=part, **kw), plain)
    with pytest.raises(ValueError, match="same ones"):
        generate(sd15, "a red circle", resume=part, seed=4, steps=6)
    with pytest.raises(ValueError, match="until"):
        generate(sd15, "a red circle", until=9, seed=4, steps=5)


def test_a_model_trained_with_masked_padding_is_sampled_with_the_same_mask(sd15):
    """reprolib.json's mask_padding: the UNet then ignores the slots after the first end-of-text token."""
    sd15.reprolib_defaults = {"mask_padding": True}
    cond = TextConditioning(sd15)
    emb = cond.encode(["a red circle", ""])
    n = len(cond.tokenize("a red circle").tokens[:5])
    assert emb.mask is not None and emb.mask[0, :5].tolist() == [1, 1, 1, 1, 1][:n] and emb.mask[0, -1] == 0
    assert emb.mask[1].sum() == 2  # an empty caption keeps its start and end tokens
    x = torch.randn(2, 4, 8, 8)
    t = sd15.scheduler.timesteps[0] if len(sd15.scheduler.timesteps) else torch.tensor(999)
    out = cond.unet(x, t, emb)
    noisy = emb.clone()
    for k in noisy.states:
        noisy.states[k] = noisy.states[k] + 100 * (1 - emb.mask[..., None]) * torch.randn_like(noisy.states[k])
    assert torch.allclose(cond.unet(x, t, noisy), out, atol=1e-5)
    sd15.reprolib_defaults = {}
    assert TextConditioning(sd15).encode("a red circle").mask is None
