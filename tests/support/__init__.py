"""Code the test suites and the benchmarks share: waiting, Prometheus scraping, concurrent registration."""
