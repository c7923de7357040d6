"""The lift loop: the stage pipeline, its resumable state and its report."""
