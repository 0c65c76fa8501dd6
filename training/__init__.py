"""Training and measuring the embedded default models (models/builtin): not served, not in the wheel."""
