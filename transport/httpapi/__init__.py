"""HTTP endpoints of the chain server: each chain, and the OpenAI-compatible ones."""
