"""The protocols behind docs/results.md: each a resumable pipeline with cached stages."""
