"""The lowest layer of RestoreBench: helpers with no project imports (atomic file writes, file hashes), usable by
operators/, priors/, solvers/, bench/ and benchmarks/ alike."""
