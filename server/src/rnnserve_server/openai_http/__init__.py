"""The OpenAI-compatible HTTP front (off unless openai_port is set) over the engine.

schema        the request body and OpenAI's error shape
completions   one completion: its model, session, generation and text
app           the routes (Starlette) and the server on the running loop (uvicorn)
"""
