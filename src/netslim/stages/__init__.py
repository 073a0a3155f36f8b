"""One thin CLI per DVC stage: arguments, config, call a step (netslim.steps), write files, track."""
