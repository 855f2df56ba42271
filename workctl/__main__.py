from workctl.cli import run

run()
