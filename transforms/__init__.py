"""Reusable Beam PTransforms, DoFns and the tf.Transform preprocessing_fn of textclf.

Nothing in this package parses flags or decides where files go; `pipeline/` does that.
"""
