"""Serve the chat engine's base model and adapters over the OpenAI chat-completions protocol.

batcher.py (continuous batching on the engine), protocol.py (OpenAI request and response shapes),
api.py (the ASGI app and uvicorn), keys.py (the API key), client.py (the studio as a client of any
OpenAI-compatible server), process.py (the app's start/stop switch), commands.py (`python -m studio
serve`).
"""
