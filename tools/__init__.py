"""Developer tools of the repository (benchmark, soak, probes, mutation, fuzzing); not part of the package."""
