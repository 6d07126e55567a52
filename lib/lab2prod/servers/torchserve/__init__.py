"""TorchServe (archived 2025-08-07): `server` archives, configures and starts it, `handler` is what it runs."""
