"""Masked-modelling methods: each names its masking, encoder, decoder and target."""

from mimkit.objectives.mae import MAEOutput, MaskedAutoencoder, build_mae

__all__ = ["MAEOutput", "MaskedAutoencoder", "build_mae"]
