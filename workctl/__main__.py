from workctl.cli.fastpath import run

run()
