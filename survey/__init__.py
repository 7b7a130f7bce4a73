"""neurosurvey: a distributed survey engine for neural representations."""

__version__ = "0.1.0"
