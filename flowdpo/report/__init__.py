"""What a run reports: `stats` (Wilson intervals, paired differences, clustered bootstrap, AUC), `run`
(`flowdpo report`: progressive accuracy, flow behaviour, figure and markdown) and `compile_table` (the
compile table inside the report)."""
