"Decide: what the recorded runs mean: paired verdicts, post-hoc fits, the recommendation on validation, its export"
