"""The Hydra configs, shipped inside the package: `pkg://fashionseg.conf`."""
