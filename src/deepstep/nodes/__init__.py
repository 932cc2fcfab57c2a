"""Graph nodes: each builds a prompt, calls a model, and returns a state update."""
