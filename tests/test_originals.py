"""The original artefacts for users: Delta.load("person_age") fetches CompVis' pretrained delta into a cache
(checked, tensors only, a clear offline error), and the original people/age prompts load as they are."""

from pathlib import Path

import pytest
import torch

from reprolib.delta import Delta
from reprolib.originals import ORIGINAL_DELTAS, SHA256, OriginalNotAvailable, cache_dir, original_delta_path
from reprolib.prompts import load_config

REFERENCE = Path("/work/shared/reference/attribute-control")
ORIGINAL = REFERENCE / "pretrained_deltas"
needs_reference = pytest.mark.skipif(not ORIGINAL.is_dir(), reason="original attribute-control deltas not present")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "deltas"


def serve(monkeypatch, folder: Path) -> None:
    """Point the download at a local folder through a file:// URL, as a mirror would be."""
    monkeypatch.setenv("REPROLIB_DELTA_URL", folder.resolve().as_uri())


def test_the_34_names():
    assert len(ORIGINAL_DELTAS) == 34 and "person_age" in ORIGINAL_DELTAS and "truck_price" in ORIGINAL_DELTAS
    if ORIGINAL.is_dir():
        assert sorted(ORIGINAL_DELTAS) == sorted(p.stem for p in ORIGINAL.glob("*.pt"))


@needs_reference
def test_load_by_name_downloads_once_into_the_cache(cache, monkeypatch):
    serve(monkeypatch, ORIGINAL)
    d = Delta.load("person_age")
    assert (cache / "person_age.pt").is_file() and cache == cache_dir()
    direct = Delta.load(ORIGINAL / "person_age.pt")
    assert d.meta["tag"] == "person_age" and d.meta["family"] == "sdxl"
    assert all(torch.equal(d.vectors[k], direct.vectors[k]) for k in direct.vectors)
    serve(monkeypatch, cache.parent / "nowhere")  # offline now: the cached copy is used
    assert torch.equal(Delta.load("person_age").vectors["clip_l"], direct.vectors["clip_l"])


def test_offline_says_where_to_put_the_file(cache, monkeypatch, tmp_path):
    serve(monkeypatch, tmp_path / "empty")
    with pytest.raises(OriginalNotAvailable) as e:
        Delta.load("person_age")
    msg = str(e.value)
    assert str(cache / "person_age.pt") in msg and "github.com/CompVis/attribute-control" in msg
    assert isinstance(e.value, FileNotFoundError) and not cache.exists()


def test_a_changed_file_is_refused(cache, monkeypatch, tmp_path):
    served = tmp_path / "mirror"
    served.mkdir()
    torch.save({"delta": {"tokenwise_delta.oai_clip_vit_l": torch.zeros(768)}}, served / "person_age.pt")
    serve(monkeypatch, served)
    with pytest.raises(ValueError, match="not the original person_age.pt"):
        original_delta_path("person_age")
    assert not (cache / "person_age.pt").exists()
    cache.mkdir(parents=True)
    (cache / "person_age.pt").write_bytes(b"truncated")  # a broken cached copy is refused, not used
    with pytest.raises(ValueError, match="not the original"):
        original_delta_path("person_age")


def test_an_unknown_name_lists_the_known_ones(cache):
    with pytest.raises(FileNotFoundError, match="person_age") as e:
        Delta.load("person_agee")
    assert "truck_price" in str(e.value) and not cache.exists()
    with pytest.raises(ValueError, match="truck_price"):
        original_delta_path("person_agee")
    assert len(SHA256) == 34 and all(len(h) == 64 for h in SHA256.values())


@pytest.mark.skipif(not (REFERENCE / "people_age.yaml").is_file(), reason="original people_age.yaml not present")
def test_the_original_people_age_prompts_load_as_they_are():
    """Pass this file with --prompts for an exact reproduction; the shipped people/age is reprolib's own."""
    original = load_config(REFERENCE / "people_age.yaml")
    assert original.tag == "people/age"
    pairs = [(p.target, p.positive, p.negative, p.pattern) for p in original.pairs]
    assert pairs == [(s, f"{m}old {s}", f"{m}young {s}", s) for m in ("", "very ") for s in ("man", "woman", "person")]
    assert len(original.prefixes) == 4 * 2 * 11 and len(set(original.prefixes)) == 88
    assert "a photo of a beautiful south-american" in original.prefixes and "a" in original.prefixes
    shipped = load_config("people/age")
    assert [(p.positive, p.negative) for p in shipped.pairs] != [(p.positive, p.negative) for p in original.pairs]
