"""Online RL: generation engines (`engine`), where they run (`backend`: the training worker's own
engine, or Ray rollout actors from `actor`), trainer-to-rollout weight sync (`weights`) and
reward functions that see the image (`rewards`)."""
