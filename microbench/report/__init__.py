"""What is saved and shown: the run record, tables, the Markdown report and plots."""
