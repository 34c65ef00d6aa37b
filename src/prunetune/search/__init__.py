"""The study: sampling, budgets, tiers, Pareto stage, export (filled by the search issue)."""
