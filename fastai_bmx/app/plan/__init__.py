"Plan: what a comparison runs, checked before the first run: the method registry, the data's source, the checks"
