"""Train the shapes-world model on CPU: VAE first, then UNet + text encoder; export the pipeline.

    python -m reprolib.shapes.train --out runs/shapes                 # the shipped recipe (resumes if interrupted)
    python -m reprolib.shapes.train --out runs/shapes --unet-steps 16000 --decay-from 12000  # train on further
    python -m reprolib.shapes.train --out runs/shapes --export reprolib/shapes/weights
    python -m reprolib.shapes.train --out runs/shapes_v4 --keep checkpoints/shapes_v4   # keep a candidate (~15 MB)
    # v2: fine-tune v1's EMA weights on the v2 scene mix with the padding slots masked in cross-attention
    python -m reprolib.shapes.train --out runs/shapes_v2 --init-from checkpoints/shapes \
        --scaling-factor 0.9965722560882568 --mix v2 --mask-padding --lr 3e-4 --warmup 100 --decay-from 100 \
        --unet-steps 4000

Every batch is drawn from a generator seeded by (seed, stage, step), so a resumed run sees the
same batches and noise as one that never stopped. Checkpoints are written atomically.
"""

from __future__ import annotations

import json
import shutil
import sys

import torch

from ... import checks
from ..tokenizer import load_tokenizer, save_tokenizer
from .data import data, training_scenes
from .export import export, keep, recorded_scaling_factor
from .options import check, parser
from .record import record, unet_shape_of
from .unet import train_unet
from .vae import encode_all, finetune_decoder, train_vae


def main(argv=None) -> None:
    p = parser(__doc__)
    a = p.parse_args(argv)
    init = None  # --init-from's checkpoint, read once: its sizes checked, its step recorded, its weights trained on
    if a.init_from:
        if not (a.init_from / "unet.pt").is_file():
            p.error(f"--init-from {a.init_from}: no unet.pt there; give a run folder (e.g. checkpoints/shapes)")
        init = torch.load(a.init_from / "unet.pt")
    check(a, init)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.export or a.keep:
        if a.export:
            print(f"exported to {export(a.out, a.export, key_caps=a.key_caps, guidance_scale=a.guidance_scale)}")
        if a.keep:
            print(f"kept in {keep(a.out, a.keep)} (train on from it with --init-from {a.keep})")
        return
    run = record(a, argv)
    tok_dir = a.out / "tokenizer"
    sf_keep = a.scaling_factor
    if a.init_from:
        src = a.init_from
        init_run = json.loads((src / "run.json").read_text()) if (src / "run.json").exists() else {}
        if init_run.get("key_norm") and not a.key_norm:
            p.error(f"--init-from {src} was trained with --key-norm; pass --key-norm to train on from it")
        if sf_keep is None:  # its latents', or a kept folder's (--keep) record
            sf_keep = recorded_scaling_factor(src, init_run)
        if sf_keep is None:
            p.error(
                f"--init-from {src}: no latents.pt there and none in its run.json; pass --scaling-factor "
                "(the one its UNet used)"
            )
        if init_run.get("key_norm"):  # its queries were scaled to its key norm already: train_unet leaves them
            run["init_key_norm"] = True
        run.update(
            init_from=str(src),
            init_step=init["step"],
            init_commands=init_run.get("commands", []),
            scaling_factor=sf_keep,
        )
        if not (tok_dir / "vocab.json").exists():  # the text encoder's vocabulary comes with it
            shutil.copytree(src / "tokenizer", tok_dir, dirs_exist_ok=True)
        for part in ("vae.pt", "decoder.pt"):  # the same frozen VAE (its latents are what the UNet knows)
            if not (a.out / part).exists() and (src / part).exists():  # and its fine-tuned decoder, if any
                shutil.copyfile(src / part, a.out / part)
    (a.out / "run.json").write_text(json.dumps(run, indent=1))
    # a resumed run keeps the tokenizer its text encoder was trained with
    tokenizer = load_tokenizer(tok_dir if (tok_dir / "vocab.json").exists() else save_tokenizer(tok_dir))
    images, captions = data(a.out, a.scenes, a.seed, a.mix)
    vae_steps = torch.load(a.out / "vae.pt")["step"] if a.init_from else a.vae_steps
    vae = train_vae(a.out, images, vae_steps, a.seed)
    latents, sf = encode_all(a.out, vae, images, sf_keep)
    print(f"latent scaling factor {sf:.4f}")
    scenes = None
    if a.grounding or a.attribute_dropout or a.token_swap:  # the objects behind each caption, rebuilt from the seed
        scenes = training_scenes(a.scenes, a.seed, a.mix)
        if [s.caption for s in scenes] != captions:
            raise checks.InputError(f"{a.out / 'data.pt'} does not match --scenes/--seed/--mix; delete it")
    _, _, _, history = train_unet(
        a.out,
        latents,
        captions,
        tokenizer,
        a.unet_steps,
        a.seed,
        batch=a.batch,
        lr=a.lr,
        decay_from=a.decay_from,
        lr_final=a.lr_final,
        init=init,
        mask_padding=a.mask_padding,
        reads=a.reads,
        summary=a.summary,
        warmup=a.warmup,
        scenes=scenes,
        grounding_weight=a.grounding,
        grounding_layers=a.grounding_layers,
        grounding_max_t=a.grounding_max_t,
        grounding_min_t=a.grounding_min_t,
        grounding_through=a.grounding_through,
        exclusive=a.exclusive,
        exclusive_layers=a.exclusive_layers,
        attribute_dropout=a.attribute_dropout,
        token_swap=a.token_swap,
        swap_reach=a.swap_reach,
        swap_late=a.swap_late,
        swap_name_size=a.swap_name_size,
        ground_adjectives=a.ground_adjectives,
        short_deltas=a.short_deltas,
        stretch=(a.stretch_nouns, a.stretch_max),
        vae=vae,
        text_width=a.text_width,
        text_layers=a.text_layers,
        unet_shape=unet_shape_of(run),
        key_norm=a.key_norm,
        init_key_norm=bool(run.get("init_key_norm")),
    )
    if history:
        print(f"unet+text: {history[-1]['step']} steps, smoothed loss {history[-1]['loss']:.4f}")
    if a.decoder_steps:
        finetune_decoder(a.out, vae, images, a.decoder_steps, a.seed)


if __name__ == "__main__":
    sys.exit(checks.run_cli(main, prog="python -m reprolib.shapes.train"))
