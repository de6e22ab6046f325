"""The pasta station: makes the pasta items of each order (see station.py)."""

from station import cook, report


def handle(event, ctx):
    cook("pasta", event, ctx)


def teardown(ctx):
    report(ctx)
