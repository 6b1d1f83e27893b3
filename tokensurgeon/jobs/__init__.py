"""Jobs built on the pipeline: compare methods, heal rows, export checkpoints, train hypernetworks."""
