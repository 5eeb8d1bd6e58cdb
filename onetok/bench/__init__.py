"""Benchmarks and the prepared GPU check: the measuring code behind `onetok bench ...` and `make gpu-check` (the
commands in scripts/ only parse, call one function here and print). Defaults: `onetok.bench.defaults`; timing:
`onetok.timing`."""
