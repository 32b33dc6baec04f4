"""diffkit.samplers: sampler math (pure functions) and the diffusers schedulers built on it."""
