from workctl.fastpath import run

run()
