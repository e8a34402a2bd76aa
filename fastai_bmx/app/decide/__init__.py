"Decide: what the recorded runs mean: paired verdicts, post-hoc fits, the recommendation chosen on validation, its export"
