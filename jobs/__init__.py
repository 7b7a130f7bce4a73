"""Ray job entrypoints (`ray job submit -- python -m jobs.run_survey --config ...`)."""
