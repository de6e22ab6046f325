"""The pizza station: makes the pizza items of each order (see station.py)."""

from station import cook, report


def handle(event, ctx):
    cook("pizza", event, ctx)


def teardown(ctx):
    report(ctx)
