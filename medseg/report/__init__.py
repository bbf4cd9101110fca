"""Reports of cohort evaluations: CSV, JSON and a self-contained HTML page (atomic writes)."""
