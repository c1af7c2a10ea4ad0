"""Protocol adapters: codec events in, broker core calls out, and back."""
