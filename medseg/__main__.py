from medseg.cli.main import cli

cli()
