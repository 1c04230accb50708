"""Evaluation: a checkpoint scored on a split (eval.py), refinements side by side, the refinement report
callback (callbacks=refine)."""
