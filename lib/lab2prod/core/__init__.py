"""The ground floor: errors, paths, files, results and their schema, the study registry, model inputs."""
