"""The static HTML report and the seed papers' findings, built from the catalogs (DESIGN §7)."""
