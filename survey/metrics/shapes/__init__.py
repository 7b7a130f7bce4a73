"""One module per shape metric, each one small `survey.metrics.shape.ShapeFamily` class, registered by name in
`survey.metrics.configuration`."""
