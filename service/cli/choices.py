"""Choices the parser offers whose commands live in heavy modules, kept here so building the
parser (and `--help`) loads neither numpy nor torch."""

# `gate --format`: the labelled set's shapes (service.cli.gate_data)
FORMATS = ("pairwise", "scalar", "steps")
