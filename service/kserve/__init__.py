"""The KServe v2 (Open Inference Protocol) tensor contract, without its wire."""
