"""Qwen2.5-Math-PRM's configuration_qwen2_rm.py, re-implemented for the test checkpoint."""

from transformers import Qwen2Config


class Qwen2RMConfig(Qwen2Config):
    pass
