"""LitServe: a maintained third server (FastAPI and uvicorn, workers per device, batching)."""
