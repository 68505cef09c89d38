"""Reports: summary tables, statistics and figures, as plain values and matplotlib Figures."""
