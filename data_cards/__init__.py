"""Data cards: one Markdown file per dataset, with YAML front matter read by `synthseg.cards`."""
