"""What runs on a user's machine outside Dagster's daemon: the demo and `ml-assets train`,
run handling for runs started in process, and the `ml-assets store` commands."""
