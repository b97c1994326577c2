"""The original authors' published deltas, fetched on demand: CompVis attribute-control's 34 pretrained SDXL deltas.

    path = original_delta_path("person_age")   # ~/.cache/reprolib/deltas/person_age.pt, downloaded once

``reprolib.delta.Delta.load("person_age")`` goes through here. The files come from the public repository
https://github.com/CompVis/attribute-control (folder ``pretrained_deltas/``, MIT licence), pinned to the commit
that added them, and each is checked against its SHA-256: a changed, truncated or substituted file is refused.
``$REPROLIB_DELTA_URL`` replaces the base URL (a mirror, or a ``file://`` folder); ``$REPROLIB_CACHE`` moves the
cache (default ``~/.cache/reprolib``; deltas go to its ``deltas/`` folder).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .checks import InputError
from .files import atomic_write

REPOSITORY = "https://github.com/CompVis/attribute-control"
COMMIT = "9f281dbf8330d4d927bd7a75460292e775b38401"  # the commit that added pretrained_deltas/ (unchanged since)
BASE_URL = f"https://raw.githubusercontent.com/CompVis/attribute-control/{COMMIT}/pretrained_deltas/"
SHA256 = {
    "bed_age": "5dbcd381861eaca807698c26d266727130d187237c50434aead638780772f08d",
    "bed_price": "a342c4275c4ac2bf315febb6e4ff23e5775e27188d73615aba58be16ca112c6e",
    "bed_size": "25484c2a9da6a280761e47bbc68a7bb6112914d10e9b45e9c4a4b0d69500f34b",
    "bike_age": "04d8653e941f0efb88b4dc1a5bf7f325a9a9d08f6d51b72b1ed0c96bceb0ddc0",
    "bike_price": "0d666005c5b23ef4c6f9b4b06bd6a2f151b3f3a3faa9c1d2eb45625366426353",
    "bike_size": "a81284cdc4ce7e78998a7af0a1d87850aec9f7548125a25edfcab149aeda294d",
    "car_age": "c5085fbb1c4d2e15dac8cffb6fb8c313684b5d08aae9869389176c8d91747967",
    "car_price": "05ef82b386b61091726e775b266ba5c4025bf2292a64fda4ddbbdb27952d23e8",
    "chair_age": "92b98b340ab7646ff19907edc0b64a9a1013d125f81373eaa0c78ba786dcc542",
    "chair_price": "912b096245049ddda2026bd40e09596fad3cc98bdb0ba8149b2d34ad6a8e5e98",
    "person_age": "e5ad3be168d75da8c6eb161f6699e2bec5a91b2abedd89bc5200dbf3815c5ec4",
    "person_bald": "dd2a4cdc7792e5a7d52969c955265f6b61c26105e434b060bdceddea94245a04",
    "person_colorful_outfit": "f3219f5ee806fa40414b333ffded500983845c392ca03b3582da1dfe013f2fe3",
    "person_curly_hair": "7f9b3edbe3f1e13952235dd201d03a61c9f724c375e766f3bbae6008abfc8a21",
    "person_elegant": "6b4ef76b6c61137f09b248e3f9e0d98a468134419b65ced3fa5dfe7ac98aaf95",
    "person_fitness": "b57655853d9848c614164b52391f6cc0ecc292ffbd3ba002ebb03be7f308c23c",
    "person_freckled": "0a31c11a8c669073d82f09bc9d956969d516ad20892edefd7e76b19deceb31e9",
    "person_groomed": "af6a627978b30110582f3a791a838cc8f1869fc950549278b3f91f9216f1265d",
    "person_height": "bb9b5b397fd000e43e7cda7467e5a411a8d956b3802b09ea5018be2cd1c286c1",
    "person_long_hair": "cf6cc1732afc55396a36849e226bd83b2b93922e089d44c2d4d68699ac9001e8",
    "person_makeup": "4d8fe90865e66792dfafdde65e4fafe6a8c9391caa2ba3909379414bdb4c647c",
    "person_pale": "fd02450607f8d98e7333f6e507e5368ae7a9300a612d566f986669441b965212",
    "person_pierced": "df6c923f122b60df331c559f067b4e3f5951e17c11dbc0ec4397c0a3a4b37a64",
    "person_posture": "49167356f2b72842d8bd2983c7c817b071b5ff9ff3c54c3ffb000faaf13568fc",
    "person_scarred": "a282ad2f7e60261960a338a72bb4c7cf0f30149db5bff800d301b0467d39ff92",
    "person_smile": "80e8a63cbb450f5ff1ccd2d862c17947eb6e2e7a16c31fbd820407964106898c",
    "person_surprised": "b9d4ded619def53de8dc3427d8fdf7cd13da5fefb972a4ccf9b113b94d555187",
    "person_tattooed": "dbe5e557b40e1a3290167b38d0a38a944c197eff8fe49e71188d20bd9f7ec738",
    "person_tired": "31f6c537f3c4087351132db1ff968f7c8a0bcf05c5957a672f7c430fad03b8ee",
    "person_width": "c7c0c8fcb6c7ae7111ef6c9c1b7c25ecb724c003cb5f39062087887927bdae04",
    "table_age": "fee9ddc6d86981f24b6a70ae924e6804eccb5c47fadf675dc4c0ca8e5102fe95",
    "table_price": "ee829ed44ef535598a39a9ff09666be3d15b2a2ebeab2d3e2fe05f7bf4d51bf4",
    "table_size": "d80b7aa199bcee70e3e857690dd560998fbc8652b0032ce36032101ce59af916",
    "truck_price": "25347f8094de5b79e1479526ffec84227e1be361065aeec87eff789d9566348f",
}
ORIGINAL_DELTAS = tuple(SHA256)  # the names Delta.load accepts: "person_age", "car_price", ...


class OriginalNotAvailable(InputError, FileNotFoundError):
    """An original delta is not in the cache and could not be downloaded; the message says where to put it."""


def base_url() -> str:
    """Where the files are fetched from: ``$REPROLIB_DELTA_URL`` if set, else :data:`BASE_URL`."""
    url = os.environ.get("REPROLIB_DELTA_URL") or BASE_URL
    return url if url.endswith("/") else url + "/"


def cache_dir() -> Path:
    """``$REPROLIB_CACHE/deltas`` (default ``~/.cache/reprolib/deltas``)."""
    return Path(os.environ.get("REPROLIB_CACHE") or Path.home() / ".cache" / "reprolib") / "deltas"


def _check(name: str, data: bytes, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise ValueError(
            f"{where} is not the original {name}.pt (SHA-256 {digest[:16]}…, expected "
            f"{SHA256[name][:16]}…): a changed or partial file. Delete it and fetch it again."
        )


def original_delta_path(name: str) -> Path:
    """The cached file of original delta ``name`` (one of :data:`ORIGINAL_DELTAS`), downloaded if missing."""
    if name not in SHA256:
        raise ValueError(f"{name!r} is not one of the original attribute-control deltas: {', '.join(ORIGINAL_DELTAS)}")
    path = cache_dir() / f"{name}.pt"
    if path.is_file():
        _check(name, path.read_bytes(), str(path))
        return path
    url = base_url() + f"{name}.pt"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise OriginalNotAvailable(
            f"the original delta {name}.pt is not in the cache and could not be downloaded from {url} ({reason}). "
            f"Without internet access, fetch it on another machine ({REPOSITORY}/blob/{COMMIT}/pretrained_deltas/"
            f"{name}.pt, or a clone of the repository) and put it at {path}; or pass the file's path to "
            "Delta.load."
        ) from None
    _check(name, data, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_bytes(data))
    return path
