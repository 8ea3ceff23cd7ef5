"""Local realization of a `ModelDeployment`: Redis, Ray, router and workers as processes."""
