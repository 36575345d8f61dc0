"""Performance measurements of RestoreBench (not the harness): `python -m benchmarks.perf` (solver overhead over
the network-bound limit), `python -m benchmarks.operator_speed`, `python -m benchmarks.gpu_path`.
Results go to results/perf*.md. Layering: benchmarks may import bench, solvers, priors, operators, common;
nothing imports benchmarks."""
