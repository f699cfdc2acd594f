"""Pipelines built from the public pieces: fast detector simulation (CaloGAN), posteriors."""

__all__: list[str] = []
