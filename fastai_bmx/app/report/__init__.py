"Report: the tables, plots, frontier and results.md of a comparison's output folder"
