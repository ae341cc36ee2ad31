"""Fault injection: crashes, kills, oversized frames, stuck workers, restart storms, a soak."""
