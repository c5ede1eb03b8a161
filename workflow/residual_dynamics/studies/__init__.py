"""The related studies, each with the same parts: analysis, figures, report section, config check."""
