"""The RL stage's pieces: `rollout` (sample and score responses) and `ppo` (advantages, update)."""
