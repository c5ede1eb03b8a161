"""Movement through embedding space (Singh): logit lens, encoding walk, concept similarity."""
