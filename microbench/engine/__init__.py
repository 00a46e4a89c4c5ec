"""What runs: model shapes, the step plan, the decoder, the graph runner, the dispatcher, ladders."""
