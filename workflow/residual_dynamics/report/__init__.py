"""The report: the page, its sections and tables, the plotting style."""
