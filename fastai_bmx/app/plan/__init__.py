"Plan: what a comparison runs, checked before the first run: the method registry, the data sources, the checks of the input"
