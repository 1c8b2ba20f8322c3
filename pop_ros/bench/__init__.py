"""pop-bench: the benchmark command (cli), its sections (benchmarks), its time budget (plan) and its
continuous-tracking figures (tracking). `python -m pop_ros.bench` runs the command."""
