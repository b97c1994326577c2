"""Training the shapes-world model on CPU (``python -m reprolib.shapes.train``): the ``data``, the ``vae``, the
``unet`` with its text encoder, the run's ``record``, the command's ``options`` and the ``export``."""

from .data import data
from .export import export
from .unet import learning_rate, train_unet
from .vae import encode_all, finetune_decoder, train_vae

__all__ = ["data", "encode_all", "export", "finetune_decoder", "learning_rate", "train_unet", "train_vae"]
