"""Evaluation: the evaluator network (:mod:`earthgen.evaluation.tilenet`) and the image
metrics of ``earthgen eval image`` (:mod:`earthgen.evaluation.image`)."""
