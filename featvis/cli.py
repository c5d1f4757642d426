"""The featvis command."""


def main() -> int:
    raise SystemExit("featvis: the command line is not built yet")
