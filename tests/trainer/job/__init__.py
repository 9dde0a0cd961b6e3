"""Tests of the trainer's job side: its inputs and the validation gates."""
