"""Online RL: generation engines (`engine`), trainer-to-rollout weight sync (`weights`) and
reward functions that see the image (`rewards`)."""
