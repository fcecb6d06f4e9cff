"""rknn-dropbox: a folder-watching daemon that converts dropped models to .rknn with rknn-toolkit2."""

__version__ = "0.1.0"
