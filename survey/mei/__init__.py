"""Most exciting inputs (DESIGN §5.5): the optimisers over images, free of the catalog and of MLflow."""
