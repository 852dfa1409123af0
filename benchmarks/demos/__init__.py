"""Demos on top of the model, not part of the benchmark proper: ``python -m benchmarks.demos.latent_diffusion_demo``."""
