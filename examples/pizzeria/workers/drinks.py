"""The drinks station: makes the drink items of each order (see station.py)."""

from station import cook, report


def handle(event, ctx):
    cook("drink", event, ctx)


def teardown(ctx):
    report(ctx)
