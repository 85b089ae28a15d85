"""Engines behind a ModelServer: each speaks OpenAI's request and response shapes."""
