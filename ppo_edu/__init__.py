"""ppo_edu: Proximal Policy Optimization from scratch, with the book that teaches it."""
from .display import show
from .ppo import PPO, PPOConfig, PRESETS, preset

__version__ = "0.1.0"
__all__ = ["PPO", "PPOConfig", "PRESETS", "preset", "show", "__version__"]
