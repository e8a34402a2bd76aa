"Run: one run trained, guarded and recorded: training, the divergence guard, the output folder's store, the executors"
