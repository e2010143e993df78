"""Membership and ownership: single, standby (Postgres lock), kafka (consumer group)."""
