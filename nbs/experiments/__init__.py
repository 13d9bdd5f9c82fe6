"""Experiment notebooks (papermill), shipped as package data and run with `synthseg run`."""
