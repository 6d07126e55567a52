"""The model under test: loading it, the reference models and their data, transforms, runtimes."""
