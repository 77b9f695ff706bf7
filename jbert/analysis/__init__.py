"""What the notebooks show: length extrapolation, diagnostics, plots, parameter tables."""
