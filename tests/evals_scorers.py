"""Scorers named by `python:` in the eval tests."""


def length_score(output, expected, input):
    return len(output) / 10


def broken(output, expected, input):
    return 1 / 0
