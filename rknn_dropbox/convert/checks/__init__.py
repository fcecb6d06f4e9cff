"""Task checks: what each model output is (class scores, detections, pixel maps, sequences, plain tensors), how the
simulator's outputs compare with the reference runtime's by that output's task, and the verdict in words.

Import the modules themselves (recognise.plan_checks, verdict.judge); the thresholds live in rknn_dropbox/thresholds.py
(the daemon's options parser reads them)."""
