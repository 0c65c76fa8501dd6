"""Other servers' APIs (OpenRLHF, vLLM) translated onto the core."""
