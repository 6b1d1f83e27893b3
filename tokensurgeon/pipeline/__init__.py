"""The transplant pipeline: session (open, align, read), method run, matrix assembly, the job, drafts."""
