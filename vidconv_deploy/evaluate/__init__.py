"""Accuracy of a model or a bundle on a video split: classifiers, per-video scoring, Ray sharding, metrics."""
