from xbarlab.cli import main

main()
