"""What `dvt report` is made of: reading run outputs (inputs), the paper's values (reference), the
cross-run comparisons (compare), the markdown pages (pages), the plots (figures, gallery)."""
