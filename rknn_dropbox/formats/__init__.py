"""Model formats: one module per format behind the Format protocol; this module is the registry."""
