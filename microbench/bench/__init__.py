"""What measures: timing, device probes, the measured-row routine, sweeps, arms, phenomena, TP."""
