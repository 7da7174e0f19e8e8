"""Checkpoint tools run before any engine starts: the preflight check, the conversion of Meta's release
layout, and the tiny-checkpoint writer behind ``make-tiny``."""
