"""The checkpoint families `rewardserve convert` knows, by name: apart from models.convert,
which needs torch, so the CLI's parser can offer them without loading it."""

ARMORM = "armorm"
QWEN_MATH_PRM = "qwen2.5-math-prm"
FAMILIES = (ARMORM, QWEN_MATH_PRM)
