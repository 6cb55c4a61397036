"""What every stage stands on: errors and the command line (errors, cli), the config and its schema (config), where
files go (paths), atomic writes (fileio), content digests and the one staleness check (manifests), class maths
(labels), scores (metrics), devices and threads (device), how OpenMP threads wait (openmp) and progress bars
(progress). Import the module you need; this package imports nothing itself, so that a light module never pulls in
torch."""
