"""What several methods share, below every method: solvers, sparsemax, similarity spaces, the hypernetwork."""
