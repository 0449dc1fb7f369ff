"""OpenAI-compatible HTTP server over the `steering` library: `python -m api`, or `api.app.create_app`."""
