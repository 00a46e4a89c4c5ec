"""What predicts and judges: the analytic model (one GPU and TP), verdicts, fits and noise."""
