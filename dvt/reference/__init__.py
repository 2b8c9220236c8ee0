"""The paper's published numbers (paper.yaml), shipped with the package for `dvt report`."""
