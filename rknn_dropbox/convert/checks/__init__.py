"""Task checks: what each model output is (class scores, detections, pixel maps, sequences, plain tensors), how the
simulator's outputs compare with the reference runtime's by that output's task, and the verdict in words.

Import the modules themselves (recognise.plan_checks, verdict.judge): this package's __init__ stays light because
the options parser reads thresholds.py."""
