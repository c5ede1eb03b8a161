"""Talking Heads (Merullo, Eickhoff & Pavlick): head composition and the Laundry List task."""
