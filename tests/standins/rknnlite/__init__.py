"""A stand-in for rknn-toolkit-lite2 on the build box (tests only): see api.py."""
